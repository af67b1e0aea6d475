"""Batches wait for their speech: a full batch is described once the transcript covers its span.

Audio and video arrive interleaved, and a segment is known only once its speech ends, so a
batch is held until the transcriber has heard past its span (at most ``max_held`` batches:
beyond that the oldest goes with the speech heard so far, which keeps memory bounded when the
audio lags or never comes).
"""

from __future__ import annotations

import logging
from collections import deque

from videocaption.audio.transcript import Transcriber
from videocaption.captioning.batching import FrameBatch

log = logging.getLogger("llm_caption")


class SpeechGate:
    """Pairs each batch with the speech of its span ``[first frame, last frame + interval)``.

    Args:
        transcriber: the run's transcript.
        interval: seconds one sampled frame stands for (1 / fps).
        max_held: batches held at most while waiting for the audio.
    """

    def __init__(self, transcriber: Transcriber, interval: float, max_held: int) -> None:
        self.transcriber = transcriber
        self.interval = interval
        self.max_held = max(1, max_held)
        self._held: deque[FrameBatch] = deque()

    def span(self, batch: FrameBatch) -> tuple[float, float]:
        return batch.start_time, batch.end_time + self.interval

    def speech(self, batch: FrameBatch) -> str:
        """What is said during the batch's span (as far as transcribed), "" for nothing."""
        return " ".join(segment.text for segment in self.transcriber.text_between(*self.span(batch)))

    def hold(self, batch: FrameBatch) -> None:
        self._held.append(batch)

    def release(self, *, everything: bool = False) -> list[tuple[FrameBatch, str]]:
        """The held batches whose span the transcript covers (all with ``everything``), in order."""
        ready = []
        while self._held:
            batch = self._held[0]
            heard = self.transcriber.covered_until() >= self.span(batch)[1]
            if not (everything or heard or len(self._held) > self.max_held):
                break
            if not (everything or heard):
                log.debug("batch %d described before the audio of its span arrived", batch.batch_id)
            ready.append((self._held.popleft(), self.speech(batch)))
        return ready
