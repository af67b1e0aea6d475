"""What people use the result for: subtitles, time-aware prompts, and folders of videos, through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import srt
import webvtt

from helpers import FAST, REPO_ROOT, SAMPLE_CLIP, make_clip
from videocaption.deepseek_vl2 import DeepseekVL2
from videocaption.graph import run_caption_graph
from videocaption.options import CaptionOptions

CLI = [sys.executable, str(REPO_ROOT / "test_llm_caption.py")]
TINY = ["--model", FAST["model"], "--device", "cpu", "--max-new-tokens", "8"]


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args, *TINY], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def subtitled(tmp_path_factory):
    """One CLI run on the sample clip writing result.json, an SRT file beside it and a VTT file elsewhere."""
    folder = tmp_path_factory.mktemp("subtitles")
    done = run_cli(str(SAMPLE_CLIP), "--batch-size", "2", "--output", "out/result.json", "--srt",
                   "--vtt", "captions.vtt", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder, json.loads((folder / "out" / "result.json").read_text())


def test_srt_has_one_cue_per_batch_at_the_batch_times(subtitled):
    folder, result = subtitled
    cues = list(srt.parse((folder / "out" / "result.srt").read_text(encoding="utf-8")))
    batches = result["batches"]
    assert len(cues) == len(batches) == 3
    assert [c.start.total_seconds() for c in cues] == [b["start_time"] for b in batches]
    # A cue lasts until the next batch starts; the last one for one sampling interval.
    assert [c.end.total_seconds() for c in cues] == [b["start_time"] for b in batches[1:]] + [batches[-1]["end_time"] + 1]
    assert [" ".join(c.content.split()) for c in cues] == [" ".join(b["description"].replace("-->", "->").split())
                                                           for b in batches]


def test_vtt_parses_and_matches_the_srt(subtitled):
    folder, result = subtitled
    captions = webvtt.read(str(folder / "captions.vtt"))
    assert [c.start_in_seconds for c in captions] == [int(b["start_time"]) for b in result["batches"]]
    cues = list(srt.parse((folder / "out" / "result.srt").read_text(encoding="utf-8")))
    assert [c.text.replace("\n", " ") for c in captions] == [c.content.replace("\n", " ") for c in cues]


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


def test_a_folder_without_videos_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    done = run_cli(str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "no video files" in done.stderr
