"""Grouping sampled frames into numbered batches of ``batch_size``."""

from __future__ import annotations

from dataclasses import dataclass, field

from videocaption.sampling.grid import SampledFrame


@dataclass
class FrameBatch:
    """Consecutive sampled frames that the model describes in one prompt."""

    batch_id: int  # 1-based, in video order
    frames: list[SampledFrame] = field(default_factory=list)
    shot: int | None = None  # adaptive sampling: the 0-based shot every frame belongs to
    frames_skipped: int = 0  # sampled near-duplicates not sent, within the batch's time span
    skipped_until: float | None = None  # time of the last of them

    @property
    def timestamps(self) -> list[float]:
        return [frame.timestamp for frame in self.frames]

    @property
    def start_time(self) -> float:
        return self.frames[0].timestamp

    @property
    def end_time(self) -> float:
        """The last frame's time, or the last skipped duplicate's when one came after it."""
        last = self.frames[-1].timestamp
        return last if self.skipped_until is None else max(last, self.skipped_until)

    def release(self) -> None:
        """Drop the pictures once described, keeping only what the result needs."""
        self.frames = [SampledFrame(image=None, timestamp=f.timestamp) for f in self.frames]  # type: ignore[arg-type]


class FrameBatcher:
    """Fills one batch at a time; a full batch is handed back, the short last one at the end.

    Args:
        hold_full: hand a full batch back only when the next frame arrives (or at
            :meth:`flush`), so that near-duplicates skipped after its last frame still extend
            its time span (:meth:`skip`). Adaptive sampling uses it.
    """

    def __init__(self, batch_size: int, first_batch_id: int = 1, *, hold_full: bool = False) -> None:
        self.batch_size = batch_size
        self.hold_full = hold_full
        self._next_id = first_batch_id
        self._current: FrameBatch | None = None

    def add(self, frame: SampledFrame, shot: int | None = None) -> FrameBatch | None:
        """Add a frame; return the batch it completed (or, holding full batches, the one it follows)."""
        held = None
        if self._current is not None and len(self._current.frames) >= self.batch_size:
            held, self._current = self._current, None
        if self._current is None:
            self._current = FrameBatch(batch_id=self._next_id, shot=shot)
            self._next_id += 1
        self._current.frames.append(frame)
        if self.hold_full or len(self._current.frames) < self.batch_size:
            return held
        full, self._current = self._current, None
        return full

    def skip(self, timestamp: float) -> None:
        """Count a skipped near-duplicate at ``timestamp`` in the batch in progress.

        Ignored when no batch is in progress: after a resume, the skipped frames that follow
        the restored batches are already counted in them.
        """
        if self._current is not None:
            self._current.frames_skipped += 1
            self._current.skipped_until = timestamp

    def flush(self) -> FrameBatch | None:
        """The partly filled last batch, if there is one (it may hold fewer than batch_size)."""
        last, self._current = self._current, None
        return last
