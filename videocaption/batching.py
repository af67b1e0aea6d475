"""Grouping sampled frames into numbered batches of ``batch_size``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .frames import SampledFrame


@dataclass
class FrameBatch:
    """Consecutive sampled frames that the model describes in one prompt."""

    batch_id: int  # 1-based, in video order
    frames: list[SampledFrame] = field(default_factory=list)

    @property
    def timestamps(self) -> list[float]:
        return [frame.timestamp for frame in self.frames]

    @property
    def start_time(self) -> float:
        return self.frames[0].timestamp

    @property
    def end_time(self) -> float:
        return self.frames[-1].timestamp

    def release(self) -> None:
        """Drop the pictures once described, keeping only what the result needs."""
        self.frames = [SampledFrame(image=None, timestamp=f.timestamp) for f in self.frames]  # type: ignore[arg-type]


class FrameBatcher:
    """Fills one batch at a time; a full batch is handed back, the short last one at the end."""

    def __init__(self, batch_size: int, first_batch_id: int = 1) -> None:
        self.batch_size = batch_size
        self._next_id = first_batch_id
        self._current: FrameBatch | None = None

    def add(self, frame: SampledFrame) -> FrameBatch | None:
        """Add a frame; return the batch it completed, if any."""
        if self._current is None:
            self._current = FrameBatch(batch_id=self._next_id)
            self._next_id += 1
        self._current.frames.append(frame)
        if len(self._current.frames) < self.batch_size:
            return None
        full, self._current = self._current, None
        return full

    def flush(self) -> FrameBatch | None:
        """The partly filled last batch, if there is one (it may hold fewer than batch_size)."""
        last, self._current = self._current, None
        return last
