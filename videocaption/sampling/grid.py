"""Sampled frames: which decoded frames to keep, and BMF video frames as RGB PIL images."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SampledFrame:
    """One frame kept for captioning: the picture and where it sits in the video."""

    image: Image.Image
    timestamp: float  # seconds from the start of the video


class FrameSampler:
    """Keeps the first frame of each sampling interval ``[k / fps, (k + 1) / fps)`` of video time.

    The demo graph already samples with the same rule inside BMF (:func:`select_expression`,
    an FFmpeg ``select`` filter), so every frame it delivers is kept. In a user's graph that
    forwards every decoded frame (for example to pass the video through to an encoder) the
    module applies the rule itself, from the timestamp alone, so dropped frames are never
    converted. Intervals with no frame (gaps, variable frame rate) are simply skipped, and a
    kept frame keeps its own time.
    """

    # A frame this close before an interval boundary counts in the next interval
    # (timestamp rounding in containers).
    TOLERANCE = 1e-3

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._last_interval: int | None = None

    def want(self, timestamp: float) -> bool:
        """Whether the frame at ``timestamp`` (seconds) should be captioned."""
        if not math.isfinite(timestamp):
            return False
        interval = math.floor((timestamp + self.TOLERANCE) * self.fps)
        if self._last_interval is not None and interval <= self._last_interval:
            return False
        self._last_interval = interval
        return True


def select_expression(fps: float) -> str:
    """FFmpeg ``select`` expression with :class:`FrameSampler`'s rule, for sampling inside BMF.

    Unlike the decoder's ``extract_frames`` (FFmpeg's ``fps`` filter), which re-stamps frames
    onto a constant-rate grid (a frame from 0.36 s comes out at 1.0 s, past the end of a 0.4 s
    clip; variable-frame-rate video gets times it never had), ``select`` keeps each frame's
    own timestamp.
    """

    def interval(t: str) -> str:
        return f"floor(({t}+{FrameSampler.TOLERANCE})*{fps!r})"

    return f"isnan(prev_selected_t)+gt({interval('t')},{interval('prev_selected_t')})"
