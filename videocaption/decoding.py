"""What BMF's decoder is asked to decode: only the frames sampling can use, on the GPU when it can.

Sampling one frame a second out of 25-60 does not need every frame decoded. FFmpeg's
``skip_frame`` (an ``AVCodecContext`` field, ``ffmpeg -skip_frame``) lets the codec drop frames
before decoding them: ``nonref`` drops frames no other frame refers to, ``bidir`` every B-frame.
BMF 0.2.0's decoder passes it through as its own integer option ``skip_frame`` (an
``AVDiscard`` value); its ``dec_params`` dict would too, but only ``skip_frame`` is applied to
the codec before it opens, so that is the one used. A dropped frame never reaches the
``select`` filter, so a sample that would have landed on it lands on the next decoded frame:
later by the run of dropped frames, at most one frame interval with ``nonref`` on x264's
default B-pyramid, two or three with ``bidir`` (measured in ``benchmarks/bench_decode.py``).

Seeking (for very sparse rates such as one frame in ten seconds of a long video) is not done:
BMF's decoder seeks only once, to ``start_time``, so a seek per sample would need a graph per
sample or a module of our own that drives libavformat.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

log = logging.getLogger("llm_caption")

# FFmpeg's AVDiscard values (libavcodec/defs.h), as BMF's decoder takes them.
AVDISCARD = {"none": 0, "nonref": 8, "bidir": 16}
DECODE_SKIPS = ("auto", "none", "nonref", "bidir")
HWACCELS = ("auto", "none", "cuda")
# Sampling rates (frames a second) up to which ``auto`` skips frames: at least ~12 decoded
# frames per sample on 25 fps and faster video, so a frame dropped here and there cannot
# make a sampling interval empty.
SPARSE_FPS = 2.0


def skip_frame(decode_skip: str, fps: float) -> int | None:
    """The decoder's ``skip_frame`` value for ``decode_skip`` at sampling rate ``fps`` (None: decode all).

    ``auto`` is ``nonref`` for sparse sampling (``fps`` <= SPARSE_FPS), else nothing.
    """
    if decode_skip == "auto":
        decode_skip = "nonref" if fps <= SPARSE_FPS else "none"
    value = AVDISCARD[decode_skip]
    return value or None


def cuda_decoding_available() -> bool:
    """BabitMF-GPU (BMF built with CUDA) is installed and torch sees a CUDA device."""
    try:
        importlib.metadata.distribution("BabitMF-GPU")
    except importlib.metadata.PackageNotFoundError:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def decode_settings(decode_skip: str, hwaccel: str, fps: float) -> dict[str, Any]:
    """The decoder options (beside ``input_path``) that ``decode_skip`` and ``hwaccel`` ask for.

    ``hwaccel`` ``cuda`` (or ``auto`` with :func:`cuda_decoding_available`) decodes on NVDEC;
    frames then arrive on the GPU and are copied back for conversion. Untested here: this
    machine has neither BabitMF-GPU nor a GPU.
    """
    settings: dict[str, Any] = {}
    value = skip_frame(decode_skip, fps)
    if value is not None:
        settings["skip_frame"] = value
    if hwaccel == "cuda" or (hwaccel == "auto" and cuda_decoding_available()):
        settings["hwaccel"] = "cuda"
    return settings
