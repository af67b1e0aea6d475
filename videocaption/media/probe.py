"""Checking an input file before decoding it, so that bad input fails with one clear line.

``ffprobe`` (installed with FFmpeg by the set-up script) tells whether the file is a video,
how long it is (for the progress bar), whether it has audio, and how its frames and keyframes
are timed (for what the decoder may skip, :mod:`videocaption.media.decoding`). It runs once per
input: :func:`probe_media` makes one :class:`MediaInfo` that the run passes along. Without
ffprobe, only the file-system checks run and BMF's own errors are translated by
:func:`explain_decoder_error`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from videocaption.errors import VideoInputError

log = logging.getLogger("llm_caption")

# Demuxers that read images: such a file has a "video stream" but is a video only when it
# holds more than one picture (an animated GIF, APNG or WebP).
IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "gif", "webp_pipe", "tiff_pipe", "apng"}
PROBE_TIMEOUT_S = 30


# File names a folder walk takes for videos.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".ts",
        ".flv",
        ".wmv",
        ".3gp",
    }
)
# Protocols of live streams: such an input plays until it is stopped (videocaption/live/captioner.py).
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "srt://", "udp://", "rtp://", "tcp://")
# Inputs read over a network protocol rather than from a local file.
URL_SCHEMES = ("http://", "https://", "s3://", "gs://") + LIVE_SCHEMES


def is_url(text: str | os.PathLike) -> bool:
    return os.fspath(text).lower().startswith(URL_SCHEMES)


def is_live_url(text: str | os.PathLike) -> bool:
    """A live stream's URL: a live protocol, or an HLS playlist (``http(s)://.../x.m3u8``)."""
    text = os.fspath(text).lower()
    if text.startswith(LIVE_SCHEMES):
        return True
    path = text.split("?", 1)[0].split("#", 1)[0]
    return text.startswith(("http://", "https://")) and path.endswith(".m3u8")


def ffmpeg_url(path: str | os.PathLike) -> str:
    """An input as FFmpeg must be given it: a URL as it is; a local path ``file:`` and absolute,
    so that no name is ever read as an option (``-x.mp4``, which ``Path`` makes of
    ``./-x.mp4``) or as a protocol (``http:x.mp4``, ``concat:...``)."""
    if is_url(path):
        return os.fspath(path)
    return "file:" + os.path.abspath(os.fspath(path))


def check_readable(path: Path) -> None:
    """File-system checks: exists, is a file, can be read, is not empty."""
    if not path.exists():
        raise VideoInputError(f"{path}: no such file")
    if path.is_dir():
        raise VideoInputError(f"{path}: is a directory, not a video file")
    if not path.is_file():
        # A pipe or device cannot be probed and then decoded (probing eats what it reads), and
        # opening a pipe nobody writes to blocks forever.
        raise VideoInputError(f"{path}: is not a regular file ({_file_kind(path)}); save the video to a file first")
    if not os.access(path, os.R_OK):
        raise VideoInputError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise VideoInputError(f"{path}: empty file, not a video")


# Seconds of packets read to measure the keyframe interval (demuxing only, ~0.15 s for 60 s of 720p).
KEYFRAME_PROBE_S = 60
# Seconds of packets, before the container's end, read to find where the video stream ends.
VIDEO_END_PROBE_S = 10


@dataclass(frozen=True)
class MediaInfo:
    """What a run needs to know about one input, probed once (:func:`probe_media`) and passed along.

    Everything is None (or 0, False) when unknown: ffprobe is absent, or the input is a URL,
    which is not probed (a live stream would be waited on).

    Attributes:
        duration: the container's duration in seconds (the progress bar; seek spans).
        start_time: the container's first timestamp (seeking needs 0).
        width, height: the first video stream's coded size (before ``rotation``).
        rotation: degrees the display matrix turns the picture (the decoder turns frames upright).
        frame_rate: the first video stream's constant frame rate (r_frame_rate equal to
            avg_frame_rate), or None when it varies.
        keyframe_interval: the longest gap between keyframes in the first KEYFRAME_PROBE_S
            seconds; None when fewer than two keyframes were seen, or when not measured
            (``keyframes=False``: only seeking needs it).
        video_end: the last video frame's time plus its duration, on the clock of the frame
            timestamps (the last subtitle cue ends there at the latest).
        has_audio: whether the input has an audio stream (BMF's decoder fails the whole graph
            when asked for the audio of an input without one).
        streams: the codec type of every stream, in order (``("video", "audio")``).
    """

    duration: float | None = None
    start_time: float = 0.0
    width: int = 0
    height: int = 0
    rotation: int = 0
    frame_rate: float | None = None
    keyframe_interval: float | None = None
    video_end: float | None = None
    has_audio: bool = False
    streams: tuple[str, ...] = ()


def probe_media(path: str | os.PathLike, *, keyframes: bool = True) -> MediaInfo:
    """Check that ``path`` is a readable video and describe it, in two ffprobe runs at most.

    One reads the streams and the container (no packets); one reads the video packets of the
    first KEYFRAME_PROBE_S seconds (the keyframe interval, when ``keyframes``) and of the last
    VIDEO_END_PROBE_S seconds (where the video ends), demuxing only. Without ffprobe only the
    file-system checks run and an unknown :class:`MediaInfo` is returned.

    Args:
        keyframes: measure the keyframe interval (only ``decode_skip`` auto or seek uses it).

    Raises:
        VideoInputError: naming the problem (missing, unreadable, not a video, no video stream,
            a still image).
    """
    path = Path(path)
    check_readable(path)
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return MediaInfo()
    info = _ffprobe(
        ffprobe,
        path,
        "stream=codec_type,width,height,r_frame_rate,avg_frame_rate:stream_tags=rotate:"
        "stream_side_data=rotation:format=duration,start_time,format_name",
    )
    streams, fmt = info.get("streams", []), info.get("format", {})
    video = [s for s in streams if s.get("codec_type") == "video"]
    if not video:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise VideoInputError(f"{path}: has no video stream (streams: {', '.join(kinds)})")
    if fmt.get("format_name") in IMAGE_FORMATS and _pictures(ffprobe, path) < 2:
        raise VideoInputError(f"{path}: is a still image, not a video")
    duration = _seconds(fmt.get("duration"))
    start_time = _seconds(fmt.get("start_time")) or 0.0
    try:
        video_end, keyframe_interval = _read_packets(ffprobe, path, duration, keyframes)
    except VideoInputError as error:
        # The streams are known: only the measures are lost (no seeking, the last cue ends one
        # sampling interval after the last frame). Seen on MKV with negative timestamps, which
        # ffprobe cannot seek in but FFmpeg decodes from the start.
        log.info("%s: the packets could not be read (%s); decoding it whole", path, error)
        video_end, keyframe_interval = None, None
    return MediaInfo(
        duration=duration,
        start_time=start_time,
        width=int(video[0].get("width") or 0),
        height=int(video[0].get("height") or 0),
        rotation=_rotation(video[0]),
        frame_rate=_constant_rate(video[0]),
        keyframe_interval=keyframe_interval,
        video_end=video_end,
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        streams=tuple(s.get("codec_type", "?") for s in streams),
    )


def probe_url_streams(url: str) -> MediaInfo:
    """The streams of a URL (whether it has audio), and nothing else: an unknown
    :class:`MediaInfo` when ffprobe is absent or cannot read it (the decoder then reports why)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return MediaInfo()
    try:
        streams = _ffprobe(ffprobe, url, "stream=codec_type").get("streams", [])
    except VideoInputError:
        return MediaInfo()
    kinds = tuple(stream.get("codec_type", "?") for stream in streams)
    return MediaInfo(has_audio="audio" in kinds, streams=kinds)


def _read_packets(
    ffprobe: str, path: Path, duration: float | None, keyframes: bool
) -> tuple[float | None, float | None]:
    """(video_end, keyframe_interval) from one read of the first video stream's packets.

    Neither duration the container states gives the video's end: the format's covers the
    audio too, and an MP4's video stream duration can be shorter than its frames' span
    (variable frame rate). So the packets of the last VIDEO_END_PROBE_S seconds are read; with
    ``keyframes``, those of the first KEYFRAME_PROBE_S seconds too, in the same run (ffprobe
    reads its intervals one after the other: keyframes are taken from the first one's span).
    """
    end = f"{max(0.0, duration - VIDEO_END_PROBE_S):.3f}%" if duration is not None else "0%"
    intervals = f"%+{KEYFRAME_PROBE_S},{end}" if keyframes and duration is not None else end
    packets = _ffprobe(
        ffprobe, path, "packet=pts_time,duration_time,flags", "-select_streams", "v:0", "-read_intervals", intervals
    ).get("packets", [])
    timed = [(t, p) for p in packets if (t := _seconds(p.get("pts_time"))) is not None]
    ends = [t + (_seconds(p.get("duration_time")) or 0.0) for t, p in timed]
    video_end = max(ends) if ends and max(ends) > 0 else None
    if not keyframes or not timed:
        return video_end, None
    first = timed[0][0]  # where the first interval began: its span is the KEYFRAME_PROBE_S after
    times = sorted({t for t, p in timed if "K" in p.get("flags", "") and t < first + KEYFRAME_PROBE_S})
    gaps = [b - a for a, b in zip(times, times[1:])]
    return video_end, (max(gaps) if gaps else None)


def _rotation(stream: dict) -> int:
    """The display matrix's rotation in degrees (0-359), from its side data or an old ``rotate`` tag."""
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            return round(float(side_data["rotation"])) % 360
    try:
        return round(float((stream.get("tags") or {}).get("rotate", 0))) % 360
    except ValueError:
        return 0


def _constant_rate(stream: dict) -> float | None:
    try:
        nominal, average = Fraction(stream["r_frame_rate"]), Fraction(stream["avg_frame_rate"])
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    if nominal <= 0 or average <= 0 or abs(nominal - average) > nominal / 100:
        return None
    return float(average)


def _ffprobe(ffprobe: str, path: Path, entries: str, *extra: str) -> dict:
    """ffprobe's JSON for ``path`` (given as a ``file:`` URL, never as something option-like)."""
    command = [ffprobe, "-v", "error", *extra, "-show_entries", entries, "-of", "json", ffmpeg_url(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoInputError(f"{path}: not a readable video (probing took over {PROBE_TIMEOUT_S} s)") from None
    if done.returncode != 0:
        raise VideoInputError(f"{path}: not a video file ({_probe_failure(done.stderr, path)})")
    try:
        return json.loads(done.stdout or "{}")
    except ValueError:
        raise VideoInputError(f"{path}: not a video file (ffprobe could not describe it)") from None


def _pictures(ffprobe: str, path: Path) -> int:
    """How many pictures an image file holds (counted from its packets, without decoding)."""
    streams = _ffprobe(ffprobe, path, "stream=codec_type,nb_read_packets", "-count_packets").get("streams", [])
    counts = [s.get("nb_read_packets") for s in streams if s.get("codec_type") == "video"]
    return int(counts[0]) if counts and str(counts[0]).isdigit() else 1


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):  # None, "N/A"
        return None
    return seconds if seconds == seconds and seconds not in (float("inf"), float("-inf")) else None


def explain_decoder_error(path: str | os.PathLike, error: Exception) -> VideoInputError | None:
    """Turn BMF's decoder failure (a RuntimeError with FFmpeg's reason) into a one-line error."""
    text = str(error)
    if "ffmpeg_decoder" not in text and "Transcode Error" not in text:
        return None
    reason = _bmf_reason(text)
    for marker in ("avformat_open_input failed:", "avformat_find_stream_info failed:"):
        if marker in reason:
            return VideoInputError(f"{path}: not a video file ({reason.split(marker, 1)[1].strip()})")
    if "Could not find audio or video stream" in reason:
        return VideoInputError(f"{path}: not a video file (no audio or video stream could be opened)")
    counts = re.search(r"decoded: (\d+)\s*, failed to decode: (\d+)", reason)
    if counts:
        decoded, failed = map(int, counts.groups())
        # BMF's decoder gives up on the whole input when over two thirds of its packets fail.
        return VideoInputError(
            f"{path}: cannot be decoded: {failed} of {decoded + failed} packets failed to "
            "decode (a damaged or truncated file)"
        )
    return VideoInputError(f"{path}: cannot be decoded ({reason[:200]})")


def _bmf_reason(text: str) -> str:
    """FFmpeg's or the decoder's own words in a BMF error, without BMF's source location.

    BMF formats them as ``BMF(0.2.0) /path/ffmpeg_decoder.cpp:1983: error: (-224:BMF Transcode
    Error) REASON in function 'close'``.
    """
    line = text.strip().splitlines()[0] if text.strip() else text
    line = re.sub(r"^.*?\(-?\d+:[^)]*\)\s*", "", line)
    return re.sub(r"\s*in function '[^']*'\s*$", "", line).strip()


def _probe_failure(stderr: str, path: Path) -> str:
    """Why ffprobe could not open a file: its last line, with the demuxer's reason when it gave one."""
    lines = [
        _strip_path(re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line), path)
        for line in stderr.strip().splitlines()
        if line.strip()
    ]
    if not lines:
        return "unknown format"
    if any("moov atom not found" in line for line in lines):
        return "moov atom not found: the MP4 index is missing, as in a truncated, unfinished or damaged file"
    return lines[-1]


def _file_kind(path: Path) -> str:
    if path.is_fifo():
        return "a named pipe"
    if path.is_socket():
        return "a socket"
    if path.is_char_device() or path.is_block_device():
        return "a device"
    return "not a plain file"


def _strip_path(reason: str, path: Path) -> str:
    return reason.replace(f"{ffmpeg_url(path)}: ", "").replace(f"{path}: ", "").strip()
