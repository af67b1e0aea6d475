"""Sampled frames: which decoded frames to keep, and BMF video frames as RGB PIL images."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SampledFrame:
    """One frame kept for captioning: the picture and where it sits in the video."""

    image: Image.Image
    timestamp: float  # seconds from the start of the video


class FrameSampler:
    """Keeps at most ``fps`` frames per second of video time.

    The demo graph already asks BMF's decoder to extract frames at ``fps``, so every frame
    it delivers is kept. In a user's graph that forwards every decoded frame (for example to
    pass the video through to an encoder) the module keeps one frame per sampling interval,
    deciding from the timestamp alone so that dropped frames are never converted.
    """

    # A frame this close before its due time still counts (timestamp rounding in containers).
    TOLERANCE = 1e-3

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps
        self._next_due: float | None = None

    def want(self, timestamp: float) -> bool:
        """Whether the frame at ``timestamp`` (seconds) should be captioned."""
        if self._next_due is None or timestamp >= self._next_due - self.TOLERANCE:
            due = timestamp if self._next_due is None else self._next_due
            # Skip whole intervals that had no frame (gaps, variable frame rate).
            while due <= timestamp + self.TOLERANCE:
                due += self.interval
            self._next_due = due
            return True
        return False


def video_frame_to_image(frame) -> Image.Image:
    """Convert a BMF ``VideoFrame`` (any pixel format, CPU or GPU) to an RGB PIL image."""
    import bmf.hmp as mp

    if frame.device.type() != mp.kCPU:
        frame = frame.cpu()
    if frame.frame().format() != mp.kPF_RGB24:
        frame = frame.reformat(mp.PixelInfo(mp.kPF_RGB24))
    rgb = frame.frame().plane(0).numpy()
    # fromarray keeps a view of BMF's buffer: copy so the frame can be released.
    return Image.fromarray(rgb.copy(), mode="RGB") if rgb.ndim == 3 else Image.fromarray(rgb).convert("RGB")


def frame_timestamp(packet, frame) -> float:
    """The frame's time in seconds: its pts in its own time base, else the packet timestamp (us)."""
    try:
        time_base = frame.time_base
        if frame.pts >= 0 and time_base.den > 0 and time_base.num > 0:
            return frame.pts * time_base.num / time_base.den
    except (AttributeError, RuntimeError):
        pass
    return packet.timestamp / 1_000_000
