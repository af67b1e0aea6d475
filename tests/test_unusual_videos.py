"""Unusual but valid videos caption correctly through the real BMF graph.

Each clip is made with ffmpeg at test time (tiny, so the module runs in seconds). For each, the
frames the module converts are compared with what ``ffmpeg`` itself decodes (size, orientation,
colours), and the batches' times in result.json with the frame times ``ffprobe`` reports.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, ffmpeg
from PIL import Image

from videocaption.graph import module as bmf_module
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions
from videocaption.sampling.grid import FrameSampler

BATCH_SIZE = 4
SMALL = "160x120"


def has_encoder(name: str) -> bool:
    done = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True)
    return any(line.split()[1:2] == [name] for line in done.stdout.splitlines() if line.strip())


def lavfi_source(duration: float, size: str = SMALL, rate: int = 25) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}"]


# name -> how to make it (ffmpeg arguments before the output path); file suffix.
CLIPS: dict[str, tuple[list[str], str]] = {
    # Frame times 0.02 * N^2 (0, 0.02, 0.08, ... 7.22 s): sampled ones fall between seconds.
    "variable_frame_rate": (
        lavfi_source(0.8)
        + [
            "-vf",
            "settb=1/1000,setpts=N*N*0.02/TB",
            "-fps_mode",
            "vfr",
            "-enc_time_base",
            "1:1000",
            "-video_track_timescale",
            "1000",
            "-pix_fmt",
            "yuv420p",
        ],
        ".mp4",
    ),
    "rotated_90": ([], ".mp4"),  # made from the plain clip below: display matrix only
    "odd_dimensions": (
        lavfi_source(1, size="640x272") + ["-vf", "scale=639:271", "-c:v", "libx264", "-pix_fmt", "yuv444p"],
        ".mp4",
    ),
    "ten_bit": (lavfi_source(2) + ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"], ".mp4"),
    "hevc": (lavfi_source(2) + ["-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"], ".mp4"),
    "vp9_webm": (lavfi_source(2) + ["-c:v", "libvpx-vp9", "-b:v", "200k", "-pix_fmt", "yuv420p"], ".webm"),
    "very_short": (lavfi_source(0.4) + ["-pix_fmt", "yuv420p"], ".mp4"),
    "long_gop": (lavfi_source(3) + ["-g", "600", "-pix_fmt", "yuv420p"], ".mp4"),
    "black_first_frame": (
        lavfi_source(2) + ["-vf", "drawbox=c=black:t=fill:enable='eq(n,0)'", "-pix_fmt", "yuv420p"],
        ".mp4",
    ),
}
NEEDS_ENCODER = {"hevc": "libx265", "vp9_webm": "libvpx-vp9"}


def make(name: str, folder: Path) -> Path:
    args, suffix = CLIPS[name]
    path = folder / f"{name}{suffix}"
    if name == "rotated_90":
        plain = folder / "plain.mp4"
        ffmpeg(*lavfi_source(2), "-pix_fmt", "yuv420p", str(plain))
        # Stream copy with a rotation tag: ffmpeg stores it as the stream's display matrix.
        ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v", "rotate=90", str(path))
    else:
        ffmpeg(*args, str(path))
    return path


def probe_frame_times(path: Path) -> list[float]:
    """Every video frame's presentation time (s), as ffprobe decodes them, from the start of the file."""
    done = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=best_effort_timestamp_time:format=start_time",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(done.stdout)
    start = float(info.get("format", {}).get("start_time") or 0.0)
    return [
        float(f["best_effort_timestamp_time"]) - start
        for f in info["frames"]
        if f.get("best_effort_timestamp_time") not in (None, "N/A")
    ]


def expected_batches(times: list[float], fps: float = 1.0) -> list[tuple[float, float, int]]:
    """(start, end, frames) of each batch when frames at ``times`` are sampled and batched."""
    sampler = FrameSampler(fps)
    sampled = [t for t in sorted(times) if sampler.want(t)]
    return [
        (chunk[0], chunk[-1], len(chunk))
        for chunk in (sampled[i : i + BATCH_SIZE] for i in range(0, len(sampled), BATCH_SIZE))
    ]


def ffmpeg_first_frame(path: Path) -> Image.Image:
    """The first frame as ffmpeg shows it (upright: ffmpeg applies the display matrix)."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-"],
        capture_output=True,
        check=True,
    )
    from io import BytesIO

    return Image.open(BytesIO(done.stdout)).convert("RGB")


@dataclass
class Run:
    path: Path
    result: dict
    decoded: list[Image.Image] = field(default_factory=list)  # what the module converted
    seen_sizes: list[tuple[int, int]] = field(default_factory=list)  # what the model was given


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Caption every clip once (one model for all), recording what the module and model saw."""
    from videocaption.backends import load_model

    folder = tmp_path_factory.mktemp("unusual")
    options = dict(FAST, max_new_tokens=4, batch_size=BATCH_SIZE)
    model = load_model(CaptionOptions(**options))
    convert = bmf_module.video_frame_to_image
    describe = model.describe_batch
    current: list[Run] = []

    def spy_convert(frame):
        image = convert(frame)
        current[-1].decoded.append(image)
        return image

    def spy_describe(requests, **kwargs):
        current[-1].seen_sizes.extend(image.size for images, _ in requests for image in images)
        return describe(requests, **kwargs)

    bmf_module.video_frame_to_image = spy_convert
    model.describe_batch = spy_describe
    done: dict[str, Run] = {}
    try:
        for name in CLIPS:
            if name in NEEDS_ENCODER and not has_encoder(NEEDS_ENCODER[name]):
                continue
            path = make(name, folder)
            current.append(Run(path, {}))
            result_path = folder / f"{name}.json"
            current[-1].result = run_caption_graph(
                path, CaptionOptions(**options, result_path=str(result_path))
            ).to_dict()
            done[name] = current[-1]
    finally:
        bmf_module.video_frame_to_image = convert
        del model.describe_batch
    return done


def get_run(runs: dict[str, Run], name: str) -> Run:
    if name not in runs:
        pytest.skip(f"this ffmpeg has no {NEEDS_ENCODER[name]} encoder to make the clip")
    return runs[name]


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLIPS))
def test_batch_times_follow_the_video_time(runs, name):
    run = get_run(runs, name)
    expected = expected_batches(probe_frame_times(run.path))
    got = [(b["start_time"], b["end_time"], b["frames"]) for b in run.result["batches"]]
    assert len(got) == len(expected), (got, expected)
    for (start, end, frames), (want_start, want_end, want_frames) in zip(got, expected):
        assert frames == want_frames, (got, expected)
        # The decoder drops non-reference frames of constant-rate clips (decode_skip auto): a
        # sample may land on the next decoded frame, at most one frame interval (1/25 s) late.
        tolerance = 1 / 25 + 2e-3
        assert (
            want_start - 2e-3 <= start <= want_start + tolerance and want_end - 2e-3 <= end <= want_end + tolerance
        ), (got, expected)
    assert run.result["frames_analysed"] == sum(e[2] for e in expected)
    assert all("error" not in b and b["description"] for b in run.result["batches"])
    assert run.result["summary"] and run.result["video_title"]


@pytest.mark.parametrize("name", list(CLIPS))
def test_frames_look_like_ffmpeg_decodes_them(runs, name):
    """Same size, orientation and colours as ffmpeg's own decode (10-bit, 4:4:4, HEVC, VP9, ...)."""
    run = get_run(runs, name)
    assert len(run.decoded) == run.result["frames_analysed"]
    assert mean_difference(run.decoded[0], ffmpeg_first_frame(run.path)) < 4.0


def test_variable_frame_rate_keeps_each_frame_time(runs):
    batches = runs["variable_frame_rate"].result["batches"]
    # 0.02 * N^2: the first frame of each second is at 0, 1.28, 2.0, 3.38 | 4.5, 5.12, 6.48, 7.22 s.
    assert [(b["start_time"], b["end_time"]) for b in batches] == [(0.0, 3.38), (4.5, 7.22)]


def test_rotated_video_reaches_the_model_upright(runs):
    run = runs["rotated_90"]
    assert all(width < height for width, height in run.seen_sizes), run.seen_sizes
    assert run.decoded[0].size == (120, 160)


def test_odd_dimensions_are_kept(runs):
    run = runs["odd_dimensions"]
    assert {image.size for image in run.decoded} == {(639, 271)}
    # The model may get a smaller copy (one tile), with the same shape.
    for width, height in run.seen_sizes:
        assert abs(width / height - 639 / 271) < 0.02


def test_very_short_video_still_gives_one_frame(runs):
    result = runs["very_short"].result
    assert result["frames_analysed"] == 1
    assert [(b["start_time"], b["end_time"]) for b in result["batches"]] == [(0.0, 0.0)]


def test_black_first_frame_is_captioned_like_any_other(runs):
    run = runs["black_first_frame"]
    assert np.asarray(run.decoded[0]).max() < 30  # black (limited range: 16 -> ~0)
    assert run.result["batches"][0]["start_time"] == 0.0
    assert run.result["frames_analysed"] == 2


def test_long_gop_gives_a_frame_every_second(runs):
    batches = runs["long_gop"].result["batches"]
    assert [(b["start_time"], b["end_time"], b["frames"]) for b in batches] == [(0.0, 2.0, 3)]


def test_an_mkv_with_negative_timestamps_is_captioned_not_refused(tmp_path):
    """ffprobe cannot read such a file's packets by interval (the probe's keyframe and end
    measure) though FFmpeg decodes it: the measures are skipped, the video is captioned
    (issue 26, doubtful case; it used to be refused as "not a video file")."""
    from videocaption.media.probe import probe_media

    video = tmp_path / "negative.mkv"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=d=3:size=160x120:rate=25",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-output_ts_offset",
        "-1",
        "-avoid_negative_ts",
        "disabled",
        str(video),
    )
    media = probe_media(video)
    assert media.keyframe_interval is None and media.video_end is None  # not measured
    result = run_caption_graph(video, CaptionOptions(**FAST, result_path=None), media=media)
    assert result.batches and result.frames_analysed >= 2
