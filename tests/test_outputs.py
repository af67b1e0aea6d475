"""What people use the result for: subtitles, time-aware prompts, and folders of videos, through the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import srt
import webvtt
from helpers import FAST, SAMPLE_CLIP, SAMPLE_DURATION, make_clip, run_cli

from videocaption.deepseek_vl2 import DeepseekVL2
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions


@pytest.fixture(scope="module")
def subtitled(tmp_path_factory):
    """One CLI run on the sample clip writing result.json, an SRT file beside it and a VTT file elsewhere."""
    folder = tmp_path_factory.mktemp("subtitles")
    done = run_cli(
        str(SAMPLE_CLIP),
        "--batch-size",
        "2",
        "--output",
        "out/result.json",
        "--srt",
        "--vtt",
        "captions.vtt",
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    return folder, json.loads((folder / "out" / "result.json").read_text())


@pytest.mark.slow
def test_srt_has_one_cue_per_batch_at_the_batch_times(subtitled):
    folder, result = subtitled
    cues = list(srt.parse((folder / "out" / "result.srt").read_text(encoding="utf-8")))
    batches = result["batches"]
    assert len(cues) == len(batches) == 3
    assert [c.start.total_seconds() for c in cues] == [b["start_time"] for b in batches]
    # A cue lasts until the next batch starts; the last one for one sampling interval, but never
    # past the end of the video stream (the last frame at 5.24 s lasts until 5.28 s).
    assert batches[-1]["end_time"] == 5.0
    assert [c.end.total_seconds() for c in cues] == [b["start_time"] for b in batches[1:]] + [SAMPLE_DURATION]
    assert [" ".join(c.content.split()) for c in cues] == [
        " ".join(b["description"].replace("-->", "->").split()) for b in batches
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, duration, video_end",
    [
        ((), 0.2, 0.2),  # five frames: one cue, 0.2 s long (not the 1 s of the sampling interval)
        # Variable frame rate: ten frames 0.04 s apart, then every seventh; the last, at 1.96 s,
        # lasts 0.04 s. (The MP4's stream duration says 1.52 s and the container's 2.2 s.)
        (("-vf", "select='lt(n,10)+not(mod(n,7))'", "-fps_mode", "vfr"), 2.2, 2.0),
    ],
)
def test_the_last_cue_ends_with_the_video(tmp_path, extra, duration, video_end):
    clip = make_clip(tmp_path / "clip.mp4", *extra, duration=duration, size="160x120", rate=25)
    done = run_cli(str(clip), "--srt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cues = list(srt.parse((tmp_path / "result.srt").read_text(encoding="utf-8")))
    batches = json.loads((tmp_path / "result.json").read_text())["batches"]
    assert cues[-1].end.total_seconds() == pytest.approx(video_end, abs=0.001)
    assert cues[-1].end.total_seconds() > batches[-1]["end_time"]  # the last frame still has its time on screen


def test_vtt_parses_and_matches_the_srt(subtitled):
    folder, result = subtitled
    captions = webvtt.read(str(folder / "captions.vtt"))
    assert [c.start_in_seconds for c in captions] == [int(b["start_time"]) for b in result["batches"]]
    cues = list(srt.parse((folder / "out" / "result.srt").read_text(encoding="utf-8")))
    assert [c.text.replace("\n", " ") for c in captions] == [c.content.replace("\n", " ") for c in cues]


@pytest.mark.slow
def test_prompts_carry_the_frame_times(tmp_path, monkeypatch):
    seen: list[str] = []
    original_describe, original_complete = DeepseekVL2.describe_batch, DeepseekVL2.complete_batch

    def describe_batch(self, requests, **kwargs):
        seen.extend(prompt for _, prompt in requests)
        return original_describe(self, requests, **kwargs)

    def complete_batch(self, prompts, **kwargs):
        seen.extend(prompts)
        return original_complete(self, prompts, **kwargs)

    monkeypatch.setattr(DeepseekVL2, "describe_batch", describe_batch)
    monkeypatch.setattr(DeepseekVL2, "complete_batch", complete_batch)
    run_caption_graph(SAMPLE_CLIP, CaptionOptions(**FAST, result_path=str(tmp_path / "result.json")))
    first, second, summary = seen[0], seen[1], seen[2]
    assert "Frame 1 at 0:00.0" in first and "Frame 4 at 0:03.0" in first
    assert "cover 0:00.0 to 0:03.0" in first
    assert "cover 0:04.0 to 0:05.0" in second
    assert "[0:00.0-0:03.0]" in summary and "[0:04.0-0:05.0]" in summary

    seen.clear()
    run_caption_graph(SAMPLE_CLIP, CaptionOptions(**FAST, time_aware=False, result_path=str(tmp_path / "plain.json")))
    assert not any("0:03.0" in prompt for prompt in seen)


@pytest.mark.slow
def test_a_folder_gets_one_result_per_video_and_done_ones_are_skipped(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(SAMPLE_CLIP, videos / "bunny.mp4")
    make_clip(videos / "bars.mkv", duration=2, size="160x120", rate=5)
    (videos / "notes.txt").write_text("not a video")

    first = run_cli(str(videos), "--output-dir", "results", "--srt", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == ["bars.json", "bars.srt", "bunny.json", "bunny.srt"]
    assert json.loads((results / "bars.json").read_text())["frames_analysed"] == 2
    assert json.loads((results / "bunny.json").read_text())["frames_analysed"] == 6
    written = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}

    # One finished, one interrupted (a checkpoint and no complete result): only that one runs again.
    (results / "bars.json").unlink()
    (results / "bars.json.partial").write_text("{}")
    again = run_cli(str(videos), "--output-dir", "results", "--srt", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Skipping" in again.stdout + again.stderr and "bunny.mp4" in again.stdout + again.stderr
    assert (results / "bunny.json").stat().st_mtime_ns == written["bunny.json"]
    assert json.loads((results / "bars.json").read_text())["frames_analysed"] == 2


@pytest.mark.slow
def test_a_folder_without_videos_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    done = run_cli(str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "no video files" in done.stderr


@pytest.mark.slow
def test_a_folder_with_equal_stems_and_a_name_too_long_captions_every_other_video(tmp_path):
    """Issue 26 #7 and #8: same.mkv was 'already captioned' as same.json; a 251-character stem ended the run."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ["a" * 251 + ".mp4", "same.mkv", "same.mp4", "zz.mp4"]:
        make_clip(videos / name, duration=1, size="160x120", rate=5)
    done = run_cli(str(videos), "--output-dir", "results", cwd=tmp_path)
    assert done.returncode == 2, done.stderr  # the one that could not be written
    assert "Traceback" not in done.stderr
    [skipped] = [line for line in done.stderr.splitlines() if line.startswith("skipped ")]
    assert "File name too long" in skipped
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["same.mkv.json", "same.mp4.json", "zz.json"]
