"""Interrupted runs: checkpoints, Ctrl-C, and --resume giving the uninterrupted result."""

import json
import signal
import subprocess
import sys
import time

import pytest

from helpers import FAST, REPO_ROOT, SAMPLE_CLIP
from videocaption.checkpoint import checkpoint_path
from videocaption.graph import build_caption_graph, run_caption_graph
from videocaption.options import CaptionOptions

TIMING_FIELDS = ("average_inference", "turnaround_time")


def comparable(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in TIMING_FIELDS}


def wait_for(path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "result.json"
    return run_caption_graph(SAMPLE_CLIP, CaptionOptions(**FAST, batch_size=1, result_path=str(path)))


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, uninterrupted):
    options = CaptionOptions(**FAST, batch_size=1, result_path=str(tmp_path / "result.json"))
    graph, node = build_caption_graph(SAMPLE_CLIP, options)
    graph.run(node, is_blocked=False)
    wait_for(checkpoint_path(options.result_path))
    graph.force_close()
    saved = json.loads(checkpoint_path(options.result_path).read_text())["batches"]
    assert 1 <= len(saved) < 6

    resumed = run_caption_graph(SAMPLE_CLIP, options.replace(resume=True))
    assert comparable(resumed) == comparable(uninterrupted)
    assert not checkpoint_path(options.result_path).exists()


def test_a_checkpoint_for_other_options_is_not_reused(tmp_path, uninterrupted):
    options = CaptionOptions(**FAST, batch_size=1, result_path=str(tmp_path / "result.json"))
    checkpoint_path(options.result_path).write_text(json.dumps({
        "version": 1, "fingerprint": "not this video",
        "batches": [{"batch_id": 1, "frames": 1, "start_time": 0.0, "end_time": 0.0, "description": "stale"}],
    }))
    resumed = run_caption_graph(SAMPLE_CLIP, options.replace(resume=True))
    assert comparable(resumed) == comparable(uninterrupted)


def test_ctrl_c_saves_what_is_done_and_resume_finishes(tmp_path, uninterrupted):
    command = [sys.executable, str(REPO_ROOT / "test_llm_caption.py"), str(SAMPLE_CLIP), "--model", FAST["model"],
               "--device", "cpu", "--max-new-tokens", "8", "--batch-size", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "result.json.partial")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted:" in stderr and "--resume" in stderr and "Traceback" not in stderr
    partial = json.loads((tmp_path / "result.json").read_text())
    assert partial["complete"] is False and partial["batches"]

    done = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((tmp_path / "result.json").read_text())
    assert comparable(resumed) | {"model": None} == comparable(uninterrupted) | {"model": None}
