"""What BMF's decoder is asked to decode: only the frames sampling can use, on the GPU when it can.

Sampling one frame a second out of 25-60 does not need every frame decoded. FFmpeg's
``skip_frame`` (an ``AVCodecContext`` field, ``ffmpeg -skip_frame``) lets the codec drop frames
before decoding them: ``nonref`` drops frames no other frame refers to, ``bidir`` every B-frame.
BMF 0.2.0's decoder passes it through as its own integer option ``skip_frame`` (an
``AVDiscard`` value; measured: 60 s of 720p30 H.264 sampled at 1 fps, 4.5 CPU s decoding all,
2.9 with ``nonref``, 2.2 with ``bidir``). The generic ``dec_params`` dict does not do it: given
``{"skip_frame": "nonref"}`` the 0.2.0 decoder fails to open the input. A dropped frame never reaches the
``select`` filter, so a sample that would have landed on it lands on the next decoded frame:
later by the run of dropped frames, at most one frame interval with ``nonref`` on x264's
default B-pyramid, two or three with ``bidir`` (measured in ``benchmarks/bench_decode.py``).

Seeking (for very sparse rates such as one frame in ten seconds of a long video) is not done:
BMF's decoder seeks only once, to ``start_time``, so a seek per sample would need a graph per
sample or a module of our own that drives libavformat.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
from fractions import Fraction
from typing import Any

log = logging.getLogger("llm_caption")

# FFmpeg's AVDiscard values (libavcodec/defs.h), as BMF's decoder takes them.
AVDISCARD = {"none": 0, "nonref": 8, "bidir": 16}
DECODE_SKIPS = ("auto", "none", "nonref", "bidir")
HWACCELS = ("auto", "none", "cuda")
# ``auto`` drops frames only when every sampling interval holds at least this many frames of a
# constant-rate stream: then the frames left (every reference frame) still fill each interval.
# On variable-frame-rate video a sparse stretch could lose its only frame, and a sample with it.
MIN_FRAMES_PER_SAMPLE = 8


def skip_frame(decode_skip: str, fps: float, frame_rate: float | None) -> int | None:
    """The decoder's ``skip_frame`` value (None: decode every frame).

    Args:
        decode_skip: the option: ``auto`` is ``nonref`` when the stream has a constant
            ``frame_rate`` of at least MIN_FRAMES_PER_SAMPLE frames per sample, else ``none``.
        fps: the sampling rate.
        frame_rate: the stream's constant frame rate (:func:`steady_frame_rate`), or None.
    """
    if decode_skip == "auto":
        sparse = frame_rate is not None and frame_rate >= MIN_FRAMES_PER_SAMPLE * fps
        decode_skip = "nonref" if sparse else "none"
    return AVDISCARD[decode_skip] or None


def steady_frame_rate(path: str | os.PathLike) -> float | None:
    """The video stream's frame rate when it is constant (ffprobe's r_frame_rate equals its
    avg_frame_rate), else None (variable frame rate, a live input, no ffprobe, unreadable)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    try:
        done = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries",
                               "stream=r_frame_rate,avg_frame_rate", "-of", "json", os.fspath(path)],
                              capture_output=True, text=True, timeout=30, check=True)
        stream = json.loads(done.stdout)["streams"][0]
        nominal, average = Fraction(stream["r_frame_rate"]), Fraction(stream["avg_frame_rate"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return None
    if nominal <= 0 or average <= 0 or abs(nominal - average) > nominal / 100:
        return None
    return float(average)


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


def decode_settings(decode_skip: str, hwaccel: str, fps: float, frame_rate: float | None) -> dict[str, Any]:
    """The decoder options (beside ``input_path``) that ``decode_skip`` and ``hwaccel`` ask for.

    ``hwaccel`` ``cuda`` (or ``auto`` with :func:`cuda_decoding_available`) decodes on NVDEC;
    frames then arrive on the GPU and are copied back for conversion. Untested here: this
    machine has neither BabitMF-GPU nor a GPU.
    """
    settings: dict[str, Any] = {}
    value = skip_frame(decode_skip, fps, frame_rate)
    if value is not None:
        settings["skip_frame"] = value
    if hwaccel == "cuda" or (hwaccel == "auto" and cuda_decoding_available()):
        settings["hwaccel"] = "cuda"
    return settings
