"""What a captioning run produces, independent of how it is written out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from videocaption.usage import Usage, usage_dict


@dataclass(frozen=True)
class BatchCaption:
    """The description of one batch of consecutive sampled frames."""

    batch_id: int  # 1-based, in video order
    frames: int  # frames in the batch; the last batch may hold fewer than batch_size
    start_time: float  # seconds: timestamp of the first frame
    end_time: float  # seconds: timestamp of the last frame
    description: str  # the model's answer
    inference_time: float = 0.0  # seconds the model call that produced it took
    error: str | None = None  # set when the model failed on this batch; description is then ""
    # Tokens of the model call(s) that described the batch, where the backend counts them.
    prompt_tokens: int | None = None  # image tokens included
    image_tokens: int | None = None
    generated_tokens: int | None = None
    # With transcribe: what is said during the batch's span ("" for none); None without.
    speech: str | None = None

    @property
    def usage(self) -> Usage | None:
        if self.prompt_tokens is None or self.generated_tokens is None:
            return None
        return Usage(self.prompt_tokens, self.generated_tokens, self.image_tokens)

    shot: int | None = None  # adaptive sampling: the 0-based shot of its frames
    frames_skipped: int = 0  # adaptive sampling: near-duplicates in its time span not sent
    # With events: the batch as a JSON object valid against the events schema (docs/events.md),
    # or None with events_error saying why in one line.
    events: dict[str, Any] | None = None
    events_error: str | None = None

    @property
    def events_json(self) -> str | None:
        """``events`` as one compact JSON string (the ``events`` column of per-segment tables)."""
        return None if self.events is None else json.dumps(self.events, ensure_ascii=False, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "batch_id": self.batch_id,
            "frames": self.frames,
            "description": self.description,
            "start_time": round(self.start_time, 6),
            "end_time": round(self.end_time, 6),
        }
        if self.shot is not None:
            data["shot"] = self.shot
            data["frames_skipped"] = self.frames_skipped
        if self.speech is not None:
            data["speech"] = self.speech
        if self.error is not None:
            data["error"] = self.error
        if self.usage is not None:
            data["usage"] = usage_dict(self.usage, self.inference_time)
        if self.events is not None:
            data["events"] = self.events
        if self.events_error is not None:
            data["events_error"] = self.events_error
        return data


@dataclass(frozen=True)
class CaptionResult:
    """A whole video: the batch descriptions, their summary and a title."""

    video_title: str
    summary: str
    batch_size: int
    batches: list[BatchCaption]
    model: str
    fps: float
    turnaround_time: float  # seconds, from the first frame received to the result
    summary_rounds: int = 1  # >1 when the descriptions had to be summarised in groups first
    # Seconds where the video stream ends, when known: the last subtitle cue ends there at the
    # latest. Not part of result.json (its end_time fields are frame times).
    video_end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the input path
    # With transcribe: every speech segment, [{start, end, text}] in seconds; None without.
    transcript: list[dict[str, Any]] | None = None

    @property
    def frames_analysed(self) -> int:
        return sum(batch.frames for batch in self.batches)

    @property
    def frames_skipped(self) -> int:
        """Sampled near-duplicates not sent to the model (adaptive sampling)."""
        return sum(batch.frames_skipped for batch in self.batches)

    @property
    def shots(self) -> int | None:
        """Shots described (adaptive sampling), else None.

        Those with a batch: two cuts between two samples make a shot no sample fell in, which
        has no batch, no description and no span in the CLI's list of shots, so it is not
        counted (counting the highest shot number would).
        """
        shots = {batch.shot for batch in self.batches if batch.shot is not None}
        return len(shots) if shots else None

    @property
    def average_inference(self) -> float:
        """Seconds of model time per batch (0 when there was no batch)."""
        timed = [batch.inference_time for batch in self.batches]
        return sum(timed) / len(timed) if timed else 0.0

    @property
    def usage(self) -> Usage | None:
        """Tokens of the batch descriptions that have counts (the summary and title passes are
        not counted); None when no batch has any (a backend that does not report them)."""
        counted = [batch.usage for batch in self.batches if batch.usage is not None]
        return sum(counted[1:], counted[0]) if counted else None

    @property
    def complete(self) -> bool:
        """False when some batch could not be described."""
        return all(batch.error is None for batch in self.batches)

    def _sampling_fields(self) -> dict[str, Any]:
        """Adaptive sampling's totals; nothing for uniform runs, whose schema stays as it was."""
        if self.shots is None:
            return {}
        return {"sampling": "adaptive", "shots": self.shots, "frames_skipped": self.frames_skipped}

    def to_dict(self) -> dict[str, Any]:
        """The result.json document: the original schema first, then the added fields."""
        return {
            "video_title": self.video_title,
            "batch_size": self.batch_size,
            "batches": [batch.to_dict() for batch in self.batches],
            "frames_analysed": self.frames_analysed,
            "summary": self.summary,
            "model": self.model,
            "fps": self.fps,
            "average_inference": round(self.average_inference, 4),
            "turnaround_time": round(self.turnaround_time, 4),
            "summary_rounds": self.summary_rounds,
            **self._usage_dict(),
            **self._sampling_fields(),
            **({"transcript": self.transcript} if self.transcript is not None else {}),
            **self.extra,
        }

    def _usage_dict(self) -> dict[str, Any]:
        usage = self.usage
        if usage is None:
            return {}
        seconds = sum(batch.inference_time for batch in self.batches if batch.usage is not None)
        return {"usage": usage_dict(usage, seconds)}


# The fields of result.json that differ between two runs of the same video and options (with
# greedy decoding everything else is equal): seconds, and speeds.
TIMING_FIELDS = frozenset({"average_inference", "turnaround_time", "tokens_per_second"})


def untimed(document: Any) -> Any:
    """A result document (or any part of one) without its timing fields, at every depth.

    What a resumed or retried run is compared by, in tests and benchmarks.
    """
    if isinstance(document, dict):
        return {key: untimed(value) for key, value in document.items() if key not in TIMING_FIELDS}
    if isinstance(document, list):
        return [untimed(value) for value in document]
    return document
