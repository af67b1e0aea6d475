"""Where speech is: Silero VAD over audio that arrives in windows.

The ``silero-vad`` wheel ships its model; it is loaded from the packaged ONNX file
(``load_silero_vad(onnx=True)``, on onnxruntime with one thread; see :func:`load_vad_model`),
never through torchaudio (the wheel needs it only for reading files, and torchaudio's wheels
need not match the installed torch). Audio is fed 512 samples (32 ms) at a time to the
wheel's streaming ``VADIterator``; only the audio of the speech in progress (and one second
before it, for the padding) is kept, and a segment longer than ``max_segment`` seconds is cut,
so memory stays flat however long the video is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from videocaption.audio.samples import SAMPLE_RATE

WINDOW = 512  # samples per VAD step at 16 kHz: what the Silero model takes
KEEP_BEFORE = SAMPLE_RATE  # samples kept before a speech start (the padding reaches back into them)


@dataclass(frozen=True)
class SpeechSegment:
    """Speech found in the audio: its times in the video and its samples (16 kHz mono)."""

    start: float  # seconds
    end: float  # seconds
    audio: np.ndarray


def _silero():
    """The ``silero_vad`` package; importing it sets torch to one thread process-wide, which
    would slow the VLM down, so the thread count is put back."""
    threads = torch.get_num_threads()
    try:
        import silero_vad
    finally:
        torch.set_num_threads(threads)
    return silero_vad


def load_vad_model():
    """The packaged Silero VAD model on ONNX Runtime, one thread (one per detector: it keeps
    stream state).

    Not the packaged TorchScript file: it runs on torch's shared thread pool, where its 32 ms
    steps cost 25 times more (measured here: 0.5 s per second of audio with 2 threads on a busy
    machine, 0.02 s with one), and torch's thread count is process-wide, so it cannot be one
    for the VAD alone without slowing the VLM.
    """
    return _silero().load_silero_vad(onnx=True)


class SpeechDetector:
    """Finds speech segments in 16 kHz mono audio fed in pieces of any length.

    Args:
        threshold: speech probability above which a window is speech (Silero's default 0.5).
        min_silence: seconds of silence that end a segment (shorter pauses stay inside it).
        min_speech: shorter segments are dropped (clicks, breaths).
        speech_pad: seconds added on each side of a segment.
        max_segment: a longer segment is cut here (Whisper hears 30 s at a time).
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_silence: float = 0.5,
        min_speech: float = 0.25,
        speech_pad: float = 0.05,
        max_segment: float = 30.0,
    ) -> None:
        self._vad = _silero().VADIterator(
            load_vad_model(),
            threshold=threshold,
            sampling_rate=SAMPLE_RATE,
            min_silence_duration_ms=round(min_silence * 1000),
            speech_pad_ms=round(speech_pad * 1000),
        )
        self._pad = round(speech_pad * SAMPLE_RATE)
        self._min_speech = round(min_speech * SAMPLE_RATE)
        self._max_segment = round(max_segment * SAMPLE_RATE)
        self._origin: float | None = None  # video time of sample 0
        self._pending = np.zeros(0, dtype=np.float32)  # fewer than WINDOW samples not yet judged
        self._kept = np.zeros(0, dtype=np.float32)  # samples from index _kept_from to the VAD position
        self._kept_from = 0
        self._speech_from: int | None = None  # start index of the speech in progress

    @property
    def position(self) -> int:
        """Samples judged so far."""
        return self._kept_from + len(self._kept)

    def covered_until(self) -> float:
        """Video time up to which every segment is complete (reported or known not to exist)."""
        if self._origin is None:
            return -math.inf
        if self._speech_from is not None:
            index = self._speech_from
        else:  # a start found at the next window is dated back by the padding and one window
            index = max(0, self.position - WINDOW - self._pad)
        return self._origin + index / SAMPLE_RATE

    def feed(self, samples: np.ndarray, start_time: float) -> list[SpeechSegment]:
        """Add samples (the first at ``start_time`` seconds of the video, when this is the first
        piece; later pieces are taken to follow on); returns the segments completed by them."""
        if self._origin is None:
            self._origin = max(0.0, float(start_time))
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        found: list[SpeechSegment] = []
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            found.extend(self._judge(window))
        return found

    def flush(self) -> list[SpeechSegment]:
        """End of the audio: the speech in progress, if any, ends here."""
        found = []
        if self._speech_from is not None:
            found.extend(self._close(self.position))
        self._vad.reset_states()
        self._pending = np.zeros(0, dtype=np.float32)
        return found

    def _judge(self, window: np.ndarray) -> list[SpeechSegment]:
        self._kept = np.concatenate([self._kept, window])
        event = self._vad(torch.from_numpy(window))
        found: list[SpeechSegment] = []
        if event and "start" in event:
            self._speech_from = max(int(event["start"]), self._kept_from)
        elif event and "end" in event and self._speech_from is not None:
            found.extend(self._close(min(int(event["end"]), self.position)))
        elif self._speech_from is not None and self.position - self._speech_from >= self._max_segment:
            found.extend(self._close(self.position, going_on=True))
        if self._speech_from is None and len(self._kept) > KEEP_BEFORE:  # trim the silence kept
            drop = len(self._kept) - KEEP_BEFORE
            self._kept, self._kept_from = self._kept[drop:], self._kept_from + drop
        return found

    def _close(self, end: int, *, going_on: bool = False) -> list[SpeechSegment]:
        """The segment from the speech start to ``end``; ``going_on``: speech continues after it."""
        start = self._speech_from
        assert start is not None and self._origin is not None
        audio = self._kept[start - self._kept_from : end - self._kept_from].copy()
        self._speech_from = end if going_on else None
        drop = end - self._kept_from  # nothing before ``end`` is needed again
        self._kept, self._kept_from = self._kept[drop:], end
        if end - start < self._min_speech:
            return []
        return [SpeechSegment(self._origin + start / SAMPLE_RATE, self._origin + end / SAMPLE_RATE, audio)]
