"""BMF frames as Python values: RGB PIL images, luma thumbnails and timestamps."""

from __future__ import annotations

import numpy as np
from PIL import Image

from videocaption.errors import VideoInputError
from videocaption.sampling.shots import luma_thumbnail


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
    except Exception as ffmpeg_error:  # noqa: BLE001 - BMF raises plain RuntimeErrors from C++
        try:
            return frame.reformat(mp.PixelInfo(mp.kPF_RGB24))
        except Exception:  # noqa: BLE001 - hmp's converter failed as well: say why in one line
            raise VideoInputError(
                f"cannot convert a {frame.width}x{frame.height} frame in pixel format "
                f"{frame.frame().format()} to RGB: {ffmpeg_error}"
            ) from None


def frame_timestamp(packet, frame) -> float:
    """The frame's time in seconds: its pts in its own time base, else the packet timestamp (us)."""
    try:
        time_base = frame.time_base
        if frame.pts >= 0 and time_base.den > 0 and time_base.num > 0:
            return frame.pts * time_base.num / time_base.den
    except (AttributeError, RuntimeError):
        pass
    return packet.timestamp / 1_000_000


def frame_thumbnail(frame) -> np.ndarray:
    """The thumbnail of a BMF ``VideoFrame``, from its Y plane when it has one.

    Planar and semi-planar YUV frames (what decoders produce) are read in place; other layouts
    (RGB from a user's module, ...) go through the RGB conversion the captioner uses anyway.
    """
    import bmf.hmp as mp

    if frame.device.type() != mp.kCPU:
        frame = frame.cpu()
    if frame.frame().format() in _luma_first_formats():
        luma = frame.frame().plane(0).numpy()
        return luma_thumbnail(luma[..., 0] if luma.ndim == 3 else luma)  # (height, width, 1) -> 2-D
    from videocaption.graph.frames import video_frame_to_image

    return luma_thumbnail(np.asarray(video_frame_to_image(frame).convert("L")))


_LUMA_FIRST: frozenset | None = None


def _luma_first_formats() -> frozenset:
    """hmp pixel formats whose plane 0 is the luma plane (8- and 16-bit planar/semi-planar YUV)."""
    global _LUMA_FIRST
    if _LUMA_FIRST is None:
        import bmf.hmp as mp

        names = (
            "kPF_YUV420P",
            "kPF_YUV422P",
            "kPF_YUV444P",
            "kPF_YUVJ420P",
            "kPF_YUVJ422P",
            "kPF_YUVJ444P",
            "kPF_NV12",
            "kPF_NV21",
            "kPF_P010LE",
            "kPF_P016LE",
            "kPF_YUVA420P",
            "kPF_YUV420P10LE",
            "kPF_YUV422P10LE",
            "kPF_YUV444P10LE",
            "kPF_GRAY8",
            "kPF_GRAY16",
        )
        _LUMA_FIRST = frozenset(getattr(mp, name) for name in names if hasattr(mp, name))
    return _LUMA_FIRST
