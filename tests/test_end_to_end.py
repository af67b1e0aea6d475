"""A real BMF graph on the real sample clip with the tiny DeepSeek-VL2 checkpoint."""

import json
import subprocess
import sys

import pytest
from helpers import FAST, REPO_ROOT, SAMPLE_CLIP, SAMPLE_DURATION

from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions

ORIGINAL_SCHEMA = ["video_title", "batch_size", "batches", "frames_analysed", "summary"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "result.json"
    options = CaptionOptions(**FAST, result_path=str(path))
    returned = run_caption_graph(SAMPLE_CLIP, options)
    written = json.loads(path.read_text())
    assert returned.to_dict() == written  # the result in memory is the document written
    return written


def test_schema_is_the_original_plus_additions(result):
    assert list(result)[:5] == ORIGINAL_SCHEMA
    for key in ("model", "fps", "average_inference", "turnaround_time"):
        assert key in result
    assert result["model"] == FAST["model"]
    assert result["fps"] == 1.0
    assert result["batch_size"] == 4
    assert result["average_inference"] > 0
    assert result["turnaround_time"] >= result["average_inference"]


def test_frames_are_sampled_at_one_per_second_and_batched(result):
    # 5.28 s at 1 fps: frames at 0..5 s, in batches of 4 and 2 (the last one short).
    assert result["frames_analysed"] == 6
    assert [b["frames"] for b in result["batches"]] == [4, 2]
    assert [b["batch_id"] for b in result["batches"]] == [1, 2]


def test_timestamps_increase_and_stay_within_the_clip(result):
    times = [(b["start_time"], b["end_time"]) for b in result["batches"]]
    assert times == [(0.0, 3.0), (4.0, 5.0)]
    for start, end in times:
        assert 0 <= start <= end <= SAMPLE_DURATION


def test_model_text_is_present(result):
    assert all(isinstance(b["description"], str) and b["description"] for b in result["batches"])
    assert isinstance(result["summary"], str) and result["summary"]
    assert isinstance(result["video_title"], str) and result["video_title"]


@pytest.mark.slow
def test_demo_cli_runs_from_another_directory(tmp_path):
    output = tmp_path / "out.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "test_llm_caption.py"),
            str(SAMPLE_CLIP),
            "--model",
            FAST["model"],
            "--device",
            "cpu",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "3",
            "--output",
            str(output),
            "--srt",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Title: " in done.stdout and "Summary: " in done.stdout
    assert "{" not in done.stdout, "BMF's graph dump must not reach the terminal"
    result = json.loads(output.read_text())
    assert [b["frames"] for b in result["batches"]] == [3, 3]
    assert (tmp_path / "out.srt").exists()
    assert not (tmp_path / "out.json.partial").exists()
