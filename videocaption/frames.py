"""Sampled frames: which decoded frames to keep, and BMF video frames as RGB PIL images."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from .errors import VideoInputError


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


def video_frame_to_image(frame) -> Image.Image:
    """Convert a BMF ``VideoFrame`` (any pixel format, CPU or GPU) to an RGB PIL image.

    FFmpeg's own converter (libswscale, through BMF's ``ffmpeg.reformat``) goes first: it reads
    every pixel format a decoder can produce (10-bit, 4:2:2/4:4:4, gray, planar RGB, full-range
    JPEG YUV, odd sizes) and honours the frame's colour matrix and range, so the model sees the
    colours ``ffmpeg`` shows. hmp's converter (the fallback, for frames FFmpeg cannot take, such
    as ones built from tensors in a user's module) only knows 8-bit YUV and RGB layouts.
    """
    import bmf.hmp as mp

    if frame.device.type() != mp.kCPU:
        frame = frame.cpu()
    if frame.frame().format() != mp.kPF_RGB24:
        frame = _to_rgb24(frame)
    rgb = frame.frame().plane(0).numpy()
    # fromarray keeps a view of BMF's buffer: copy so the frame can be released.
    return Image.fromarray(rgb.copy(), mode="RGB") if rgb.ndim == 3 else Image.fromarray(rgb).convert("RGB")


def _to_rgb24(frame):
    """The frame as packed 8-bit RGB: FFmpeg's conversion, else hmp's (see above)."""
    import bmf.hmp as mp
    from bmf.lib._bmf.sdk import ffmpeg

    try:
        return ffmpeg.reformat(frame, "rgb24")
    except Exception as ffmpeg_error:  # BMF raises plain RuntimeErrors from C++
        try:
            return frame.reformat(mp.PixelInfo(mp.kPF_RGB24))
        except Exception:
            raise VideoInputError(f"cannot convert a {frame.width}x{frame.height} frame in pixel format "
                             f"{frame.frame().format()} to RGB: {ffmpeg_error}") from None


def frame_timestamp(packet, frame) -> float:
    """The frame's time in seconds: its pts in its own time base, else the packet timestamp (us)."""
    try:
        time_base = frame.time_base
        if frame.pts >= 0 and time_base.den > 0 and time_base.num > 0:
            return frame.pts * time_base.num / time_base.den
    except (AttributeError, RuntimeError):
        pass
    return packet.timestamp / 1_000_000
