"""Decoding only what sampling needs: the mode ``decode_skip`` comes to, and exact pictures from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, ffmpeg, make_clip

from videocaption.errors import InvalidOptionError, VideoInputError
from videocaption.graph import module as bmf_module
from videocaption.graph.build import decode_mode, decoder_options
from videocaption.graph.runner import run_caption_graph
from videocaption.media.decoding import AVDISCARD_NONREF, choose_decode, seek_spans
from videocaption.media.probe import MediaInfo, probe_media
from videocaption.options import CaptionOptions

# 10 fps, a keyframe every 2 s, B-frames that other frames refer to (x264's default preset).
GOP_CLIP = dict(duration=24.0, size="160x120", rate=10)


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory) -> Path:
    return make_clip(
        tmp_path_factory.mktemp("decoding") / "gop2s.mp4",
        "-c:v",
        "libx264",
        "-g",
        "20",
        "-keyint_min",
        "20",
        "-sc_threshold",
        "0",
        **GOP_CLIP,
    )


def probed(frame_rate=None, duration=None, start_time=0.0, keyframe_interval=None) -> MediaInfo:
    """What decoding is chosen by, in the order these cases list it."""
    return MediaInfo(
        frame_rate=frame_rate, duration=duration, start_time=start_time, keyframe_interval=keyframe_interval
    )


def test_probe_reads_rate_duration_and_keyframe_interval(gop_clip):
    timing = probe_media(gop_clip)
    assert timing.frame_rate == 10.0 and timing.duration == pytest.approx(24.0) and timing.start_time == 0.0
    assert timing.keyframe_interval == pytest.approx(2.0)
    assert timing.video_end == pytest.approx(24.0) and not timing.has_audio and timing.streams == ("video",)
    assert probe_media(gop_clip, keyframes=False).keyframe_interval is None  # (only seeking needs it)
    with pytest.raises(VideoInputError, match="no such file"):  # one probe checks the file too
        probe_media(gop_clip.with_name("missing.mp4"))


@pytest.mark.parametrize(
    "fps, timing, can_seek, mode",
    [
        (0.25, probed(10.0, 24.0, 0.0, 2.0), True, "seek"),  # samples 4 s apart, keyframes 2 s apart
        (0.25, probed(10.0, 24.0, 0.0, 2.0), False, "nonref"),  # adaptive sampling or a URL: no seeking
        (1.0, probed(10.0, 24.0, 0.0, 2.0), True, "nonref"),  # keyframes farther apart than samples
        (1.0, probed(5.0, 24.0, 0.0, 2.0), True, "none"),  # 5 frames a sample: too few to drop any
        (0.25, probed(None, 24.0, 0.0, 2.0), True, "none"),  # variable rate: a span may hold no frame
        (0.25, probed(10.0, 24.0, 0.0, None), True, "nonref"),  # one keyframe in the first minute
        (0.25, probed(10.0, None, 0.0, 2.0), True, "nonref"),  # no duration: no spans to plan
        (0.25, probed(10.0, 24.0, 1.4, 2.0), True, "nonref"),  # timestamps not from 0 (MPEG-TS)
    ],
)
def test_auto_seeks_only_where_it_saves_and_is_safe(fps, timing, can_seek, mode):
    assert choose_decode("auto", fps, timing, can_seek=can_seek) == mode


def test_explicit_modes_are_kept():
    for mode in ("none", "nonref", "seek"):
        assert choose_decode(mode, 1.0, probed(duration=24.0), can_seek=True) == mode
    with pytest.raises(ValueError, match="duration"):
        choose_decode("seek", 1.0, probed(), can_seek=True)


def test_seek_spans_start_on_the_sampling_grid_and_hold_a_frame():
    assert seek_spans(0.25, 10.0, 10.0) == [0.0, 0.15, 4.0, 4.15, 8.0, 8.15]
    assert seek_spans(0.5, 4.0, None) == [0.0, 0.4, 2.0, 2.4]  # unknown rate: a fifth of the interval
    assert seek_spans(0.1, 0.5, 30.0) == [0.0, 0.05]  # a video shorter than one interval: one sample


def test_decoder_options_follow_the_mode(gop_clip):
    assert decoder_options(gop_clip, CaptionOptions(fps=1.0))["skip_frame"] == AVDISCARD_NONREF
    seeking = decoder_options(gop_clip, CaptionOptions(fps=0.25))
    assert "skip_frame" not in seeking and seeking["durations"][:4] == [0.0, 0.15, 4.0, 4.15]
    assert set(decoder_options(gop_clip, CaptionOptions(fps=0.25, decode_skip="none"))) == {"input_path", "autorotate"}


def test_seek_is_refused_where_it_cannot_work(gop_clip):
    with pytest.raises(InvalidOptionError, match="uniform sampling"):
        decode_mode(gop_clip, CaptionOptions(decode_skip="seek", sampling="adaptive"))
    with pytest.raises(InvalidOptionError, match="local file"):
        decode_mode("http://127.0.0.1:9/x.mp4", CaptionOptions(decode_skip="seek"))


@pytest.fixture
def converted(monkeypatch) -> list:
    """Every picture the caption module converts, in order."""
    seen = []
    convert = bmf_module.video_frame_to_image

    def recording(frame):
        image = convert(frame)
        seen.append(np.asarray(image))
        return image

    monkeypatch.setattr(bmf_module, "video_frame_to_image", recording)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("fps, mode", [(0.25, "seek"), (1.0, "nonref")])
def test_skipping_modes_give_the_full_decodes_pictures(gop_clip, tmp_path, converted, fps, mode):
    """Seeking takes exactly uniform sampling's frames; dropping non-reference frames moves a
    sample at most one frame later, and every picture equals the full decode's of that frame."""

    def run(decode_skip: str) -> tuple[list[tuple[float, float, int]], list]:
        converted.clear()
        options = CaptionOptions(
            **FAST, fps=fps, decode_skip=decode_skip, result_path=str(tmp_path / f"{decode_skip}.json")
        )
        result = run_caption_graph(gop_clip, options).to_dict()
        return [(b["start_time"], b["end_time"], b["frames"]) for b in result["batches"]], list(converted)

    assert decode_mode(gop_clip, CaptionOptions(fps=fps))[0] == mode  # what auto picks here
    full_batches, full_pictures = run("none")
    batches, pictures = run(mode)
    assert len(pictures) == len(full_pictures) == int(GOP_CLIP["duration"] * fps)
    if mode == "seek":
        assert batches == full_batches
        assert all(np.array_equal(a, b) for a, b in zip(pictures, full_pictures))
    else:
        for (start, end, frames), (full_start, full_end, full_frames) in zip(batches, full_batches):
            assert frames == full_frames
            assert 0 <= start - full_start <= 0.1 + 1e-6 and 0 <= end - full_end <= 0.1 + 1e-6


def test_each_seek_span_is_turned_upright_too(gop_clip, tmp_path, converted):
    """BMF rebuilds its rotation filter after every seek: a phone video stays upright throughout."""
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", str(gop_clip), "-c", "copy", "-metadata:s:v", "rotate=90", str(rotated))
    pictures = {}
    for mode in ("none", "seek"):
        converted.clear()
        options = CaptionOptions(**FAST, fps=0.25, decode_skip=mode, result_path=str(tmp_path / f"{mode}.json"))
        run_caption_graph(rotated, options)
        pictures[mode] = list(converted)
    assert [p.shape for p in pictures["seek"]] == [(160, 120, 3)] * 6
    assert all(np.array_equal(a, b) for a, b in zip(pictures["seek"], pictures["none"]))


def test_asking_for_cuda_decoding_without_it_says_so(gop_clip, caplog):
    """BMF's decoder falls back to the CPU silently when NVDEC cannot be had."""
    from videocaption.media.decoding import cuda_decoding_available

    if cuda_decoding_available():
        pytest.skip("this machine can decode on the GPU")
    settings = decoder_options(gop_clip, CaptionOptions(hwaccel="cuda"))
    assert settings["hwaccel"] == "cuda"
    assert "hwaccel cuda" in caplog.text and "decodes on the CPU" in caplog.text
    caplog.clear()
    assert "hwaccel" not in decoder_options(gop_clip, CaptionOptions(hwaccel="auto")) and not caplog.text
