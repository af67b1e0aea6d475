"""Which frames the model sees: every sampled frame (``uniform``) or only where the video changes (``adaptive``).

``adaptive`` keeps :class:`~videocaption.sampling.grid.FrameSampler`'s grid (the first frame of each
``1/fps`` interval) and then, per sampled frame:

- **a hard cut** (see :func:`~videocaption.sampling.shots.scene_change`), looked for between the frames
  the module receives, samples or not (every CUT_CHECK_SPACING seconds and every sample), so a
  cut between two samples is not missed, starts a new shot: the batch in progress ends and the first sampled frame after the cut is always
  kept, so no description spans two shots;
- **a near-duplicate** of the last frame sent (:func:`~videocaption.sampling.shots.changed_area` at most
  ``duplicate_threshold``) is not sent; the batch's time span still covers it and it is counted
  (``frames_skipped``);
- **a floor**: a frame is sent at least every ``max_gap`` seconds even on a perfectly static
  shot, so a long static scene still has descriptions spread over it.

Sampler state depends only on the frames, in order, so a resumed run replays the same
decisions over the frames it skips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from videocaption.sampling.grid import FrameSampler
from videocaption.sampling.shots import changed_area, scene_change

Thumbnail = Callable[[], np.ndarray]  # computes a frame's thumbnail, only when asked
# Between samples, frames are looked at for cuts at most this often (seconds of video): every
# third frame at 30 fps. A cut still shows, as a jump between two frames 0.1 s apart (motion
# over 0.1 s moves a thumbnail by a few levels, a cut by tens), at a third of the cost.
CUT_CHECK_SPACING = 0.1


@dataclass(frozen=True)
class Decision:
    """What to do with one frame."""

    keep: bool  # convert it and send it to the model
    shot: int  # 0-based index of the shot the frame belongs to
    new_shot: bool = False  # a cut came before it: it starts a new batch (only set on kept frames)
    skipped: bool = False  # a sampled near-duplicate: not sent, but counted in its batch


class UniformSampler:
    """Every frame on the sampling grid is sent (today's behaviour); one shot."""

    def __init__(self, fps: float) -> None:
        self._grid = FrameSampler(fps)

    def decide(self, timestamp: float, thumbnail: Thumbnail | None = None) -> Decision:
        return Decision(keep=self._grid.want(timestamp), shot=0)


class AdaptiveSampler:
    """Sampled frames that show something new, shot by shot (see the module docstring).

    Args:
        fps: the sampling grid.
        scene_threshold: mean luma difference (0-255) between consecutive frames that counts
            as a hard cut.
        duplicate_threshold: changed fraction of the picture (0-1) up to which a sampled frame
            is a near-duplicate of the last frame sent.
        max_gap: seconds after which a frame is sent even if it is a near-duplicate.
    """

    def __init__(self, fps: float, scene_threshold: float, duplicate_threshold: float, max_gap: float) -> None:
        self._grid = FrameSampler(fps)
        self.scene_threshold = scene_threshold
        self.duplicate_threshold = duplicate_threshold
        self.max_gap = max_gap
        self._previous: np.ndarray | None = None  # the last frame looked at (sampled or not)
        self._checked_time = -math.inf
        self._sent: np.ndarray | None = None  # the last frame sent to the model
        self._sent_interval = -math.inf  # the grid interval of the last frame sent
        self._shot = 0
        self._cut_pending = False  # a cut since the last kept frame
        self.cut_times: list[float] = []  # where each shot after the first starts (seconds)

    def decide(self, timestamp: float, thumbnail: Thumbnail | None = None) -> Decision:
        """Decide on the next frame in stream order.

        Args:
            timestamp: the frame's time (seconds).
            thumbnail: computes its thumbnail (:func:`~videocaption.graph.frames.frame_thumbnail`);
                without one the frame can be neither compared nor skipped, so it is treated
                as ``uniform`` treats it.
        """
        if not math.isfinite(timestamp):
            return Decision(keep=False, shot=self._shot)
        sampled = self._grid.want(timestamp)
        current = None
        if thumbnail is not None and (sampled or timestamp - self._checked_time >= CUT_CHECK_SPACING):
            current = thumbnail()
            self._checked_time = timestamp
            if self._previous is not None and scene_change(self._previous, current) > self.scene_threshold:
                self._shot += 1
                self._cut_pending = True
                self.cut_times.append(timestamp)
            self._previous = current
        if not sampled:
            return Decision(keep=False, shot=self._shot)
        if self._is_duplicate(timestamp, current):
            return Decision(keep=False, shot=self._shot, skipped=True)
        new_shot, self._cut_pending = self._cut_pending, False
        self._sent, self._sent_interval = current, self._interval(timestamp)
        return Decision(keep=True, shot=self._shot, new_shot=new_shot)

    def _is_duplicate(self, timestamp: float, current: np.ndarray | None) -> bool:
        if current is None or self._sent is None or self._cut_pending:
            return False
        # Counted in grid intervals, not seconds: a sample landing a frame late (a skipped
        # frame, rounding) must not stretch the gap by a whole interval.
        if self._interval(timestamp) - self._sent_interval >= self.max_gap * self._grid.fps - FrameSampler.TOLERANCE:
            return False
        return changed_area(self._sent, current) <= self.duplicate_threshold

    def _interval(self, timestamp: float) -> int:
        return math.floor((timestamp + FrameSampler.TOLERANCE) * self._grid.fps)


def shot_spans(batches: list[dict]) -> list[tuple[int, float, float]]:
    """(shot, start, end) seconds of each shot, from result.json's batches (empty for uniform runs)."""
    spans: dict[int, tuple[float, float]] = {}
    for batch in batches:
        if "shot" in batch:
            start, end = spans.get(batch["shot"], (batch["start_time"], batch["end_time"]))
            spans[batch["shot"]] = (min(start, batch["start_time"]), max(end, batch["end_time"]))
    return [(shot, start, end) for shot, (start, end) in sorted(spans.items())]


def make_sampler(options) -> UniformSampler | AdaptiveSampler:
    """The sampler ``options.sampling`` names (a :class:`~videocaption.options.CaptionOptions`)."""
    if options.sampling == "adaptive":
        return AdaptiveSampler(options.fps, options.scene_threshold, options.duplicate_threshold, options.max_gap)
    return UniformSampler(options.fps)
