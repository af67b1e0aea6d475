"""What BMF's decoder is asked to decode: only the frames sampling can use, on the GPU when it can.

Sampling one frame a second out of 25-60 does not need every frame decoded. Two mechanisms
work through BMF 0.2.0's own decoder, and both keep every sampled picture exact:

- ``nonref``: FFmpeg's ``skip_frame`` (an ``AVCodecContext`` field, ``ffmpeg -skip_frame``),
  which BMF's decoder takes as its own integer option (an ``AVDiscard`` value), drops the frames
  no other frame refers to before decoding them. Nothing decoded depends on them, so the frames
  left are bit-identical to a full decode's; a sample that would have landed on a dropped frame
  lands on the next decoded one, at most one frame interval later on x264's B-pyramid
  (``benchmarks/bench_decode.py`` measures both). Dropping every B-frame (``bidir``) would save
  more, but H.264 B-frames are often references: on an x264 ``medium`` encode 214 of its 220
  P-frames then decoded differently from a full decode (a damaged picture for the model), so
  that mode is not offered.
- ``seek``: for sparse rates (``--fps 0.1`` on a long video), BMF's ``durations`` option (a list
  of [start, end] pairs) decodes only those spans: at the end of each it seeks to the keyframe
  before the next start and decodes from there, trimming to the span. One short span per
  sample gives exactly the frame uniform sampling takes, for the cost of decoding from the
  keyframe before it: cheaper than decoding everything once samples lie farther apart than
  keyframes do.

The generic ``dec_params`` dict reaches ``avcodec_open2`` too, but only with FFmpeg's option
names (``noref``, not ``nonref``): given ``{"skip_frame": "nonref"}`` the decoder fails to open.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from typing import Any

from videocaption.media.probe import MediaInfo

log = logging.getLogger("llm_caption")

# FFmpeg's AVDiscard values (libavcodec/defs.h), as BMF's decoder takes them.
AVDISCARD_NONREF = 8
AVDISCARD_ALL = 48
# ``auto`` drops frames only when every sampling interval holds at least this many frames of a
# constant-rate stream: then the frames left (every reference frame) still fill each interval.
# On variable-frame-rate video a sparse stretch could lose its only frame, and a sample with it.
MIN_FRAMES_PER_SAMPLE = 8
# A seek span lasts this many frame intervals, so that it holds at least one frame.
SEEK_SPAN_FRAMES = 1.5


def choose_decode(decode_skip: str, fps: float, media: MediaInfo, *, can_seek: bool) -> str:
    """The decode mode to use: ``none``, ``nonref`` or ``seek``.

    ``auto`` seeks when samples lie at least a keyframe interval apart (so decoding from the
    keyframe before each costs at most half of decoding everything, on average) in a
    constant-frame-rate file that can seek (:func:`seek_problem`); a variable-rate one, such as a
    screen recording, may have no frame in a short span after a sample time, and lose that
    sample. Else it drops non-reference frames when a constant rate gives
    MIN_FRAMES_PER_SAMPLE or more frames per sample; else it decodes everything.

    Args:
        can_seek: the caller allows seeking: a local file, sampled uniformly (adaptive sampling
            looks at every frame).

    Raises:
        ValueError: ``seek`` asked for where it cannot work (the message says why).
    """
    problem = seek_problem(media, can_seek)
    if decode_skip == "seek" and problem:
        raise ValueError(f"decode_skip seek needs {problem}")
    if decode_skip != "auto":
        return decode_skip
    if (
        not problem
        and media.frame_rate is not None
        and media.keyframe_interval is not None
        and 1 / fps >= media.keyframe_interval
    ):
        return "seek"
    if media.frame_rate is not None and media.frame_rate >= MIN_FRAMES_PER_SAMPLE * fps:
        return "nonref"
    return "none"


def reads_keyframes(decode_skip: str, sampling: str) -> bool:
    """Whether choosing the decode mode looks at the keyframe interval (only seeking does, and
    only uniform sampling may seek): else :func:`~videocaption.media.probe.probe_media` need not
    read the packets that measure it."""
    return decode_skip in ("auto", "seek") and sampling == "uniform"


def seek_problem(media: MediaInfo, can_seek: bool) -> str | None:
    """Why seeking to each sample cannot work here (completing "seek needs ..."), or None."""
    if not can_seek:
        return "uniform sampling of a local file (adaptive sampling looks at every frame)"
    if media.duration is None:
        return "the video's duration, and ffprobe could not tell it"
    if abs(media.start_time) >= 1e-3:  # BMF plans its spans from the file's start
        return f"a file whose timestamps start at 0 (this one starts at {media.start_time:g} s)"
    return None


def seek_spans(fps: float, duration: float, frame_rate: float | None) -> list[float]:
    """BMF's ``durations`` for one sample per ``1/fps`` seconds: ``[t0, t0 + span, t1, ...]``.

    Each span starts on uniform sampling's grid and lasts SEEK_SPAN_FRAMES frame intervals, so
    the first frame in it is the one uniform sampling takes; without a known constant rate
    (``seek`` asked for on variable-rate video) it lasts a fifth of the sampling interval, at
    most 1 s: a sample whose interval has no frame in that span is lost.
    """
    interval = 1 / fps
    span = SEEK_SPAN_FRAMES / frame_rate if frame_rate else 0.2 * interval
    span = min(span, 1.0, interval / 2)
    count = max(1, math.ceil(duration * fps - 1e-9))
    return [round(value, 6) for k in range(count) for value in (k * interval, k * interval + span)]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cuda_decoding_available() -> bool:
    """BabitMF-GPU (BMF built with CUDA) is installed and torch sees a CUDA device."""
    if not _installed("BabitMF-GPU"):
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def decode_settings(mode: str, hwaccel: str, fps: float, media: MediaInfo) -> dict[str, Any]:
    """The decoder options (beside ``input_path``) for a :func:`choose_decode` mode and ``hwaccel``.

    ``hwaccel`` ``cuda`` (or ``auto`` with :func:`cuda_decoding_available`) decodes on NVDEC;
    frames then arrive on the GPU and are copied back for conversion. Untested here: this
    machine has neither BabitMF-GPU nor a GPU.
    """
    settings: dict[str, Any] = {}
    if mode == "nonref":
        settings["skip_frame"] = AVDISCARD_NONREF
    elif mode == "seek":
        settings["durations"] = seek_spans(fps, media.duration, media.frame_rate)
    available = hwaccel != "none" and cuda_decoding_available()
    if hwaccel == "cuda" and not available:
        # BMF's decoder then falls back to the CPU without a word: say it once here.
        missing = "BabitMF-GPU is not installed" if not _installed("BabitMF-GPU") else "torch sees no CUDA device"
        log.warning("hwaccel cuda: %s, so FFmpeg decodes on the CPU", missing)
    if hwaccel == "cuda" or available:
        settings["hwaccel"] = "cuda"
    return settings
