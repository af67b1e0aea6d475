"""The timed transcript of a run: speech segments found, recognised, and looked up by time span."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from videocaption.audio.recognizers import SpeechRecognizer
from videocaption.audio.vad import SpeechDetector

log = logging.getLogger("llm_caption")


@dataclass(frozen=True)
class TranscriptSegment:
    """What was said between ``start`` and ``end`` (seconds of the video)."""

    start: float
    end: float
    text: str

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}


class Transcriber:
    """Audio in (windows of 16 kHz mono), timed text out; recognises each segment as soon as the
    detector closes it.

    Args:
        recognizer: turns one segment's samples into text.
        language: ISO code of the spoken language, or None to let the recogniser decide.
        detector: finds the speech (a fresh :class:`SpeechDetector` by default).
    """

    def __init__(
        self, recognizer: SpeechRecognizer, language: str | None = None, detector: SpeechDetector | None = None
    ) -> None:
        self.recognizer = recognizer
        self.language = language
        self.detector = detector if detector is not None else SpeechDetector()
        self.segments: list[TranscriptSegment] = []
        self.ended = False  # no more audio comes (end of stream, no audio stream, or a failure)
        self.audio_seen = False

    def add(self, samples: np.ndarray, start_time: float) -> None:
        """Feed samples that start at ``start_time`` seconds (the first piece sets the clock)."""
        if self.ended:
            return
        self.audio_seen = True
        for segment in self.detector.feed(samples, start_time):
            self._recognise(segment.start, segment.end, segment.audio)

    def end(self) -> None:
        """No more audio: recognise the speech in progress."""
        if self.ended:
            return
        self.ended = True
        for segment in self.detector.flush():
            self._recognise(segment.start, segment.end, segment.audio)

    def covered_until(self) -> float:
        """Video time up to which the transcript is complete."""
        return math.inf if self.ended else self.detector.covered_until()

    def text_between(self, start: float, end: float) -> list[TranscriptSegment]:
        """The segments that overlap ``[start, end)``, in order."""
        return [s for s in self.segments if s.start < end and s.end > start]

    def _recognise(self, start: float, end: float, audio: np.ndarray) -> None:
        text = " ".join(self.recognizer.transcribe(audio, language=self.language).split())
        if text:  # silence the recogniser hears nothing in is no segment
            self.segments.append(TranscriptSegment(start, end, text))
            log.debug("speech %.2f-%.2f s: %s", start, end, text)
