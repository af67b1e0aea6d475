"""Interrupted runs: checkpoints, Ctrl-C, and --resume giving the uninterrupted result."""

import json
import signal
import subprocess
import time

import pytest
from helpers import CLI as CLI_ALONE
from helpers import FAST, FAST_FLAGS, SAMPLE_CLIP, untimed

from videocaption.captioning.checkpoint import checkpoint_path
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions

CLI = [*CLI_ALONE, str(SAMPLE_CLIP), *FAST_FLAGS, "--batch-size", "1"]


def wait_for(path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "result.json"
    return run_caption_graph(SAMPLE_CLIP, CaptionOptions(**FAST, batch_size=1, result_path=str(path))).to_dict()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    process = subprocess.Popen(CLI, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "result.json.partial")
    process.kill()  # no chance to clean up, as in a crash or an OOM kill
    process.wait(timeout=60)
    saved = json.loads((tmp_path / "result.json.partial").read_text())["batches"]
    assert 1 <= len(saved) < 6
    assert not (tmp_path / "result.json").exists()

    done = subprocess.run(CLI + ["--resume", "--verbose"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming after {len(saved)} batches described before" in done.stderr
    resumed = json.loads((tmp_path / "result.json").read_text())
    assert untimed(resumed) == untimed(uninterrupted)
    assert not (tmp_path / "result.json.partial").exists()


@pytest.mark.slow
def test_a_checkpoint_for_other_options_is_not_reused(tmp_path, uninterrupted):
    options = CaptionOptions(**FAST, batch_size=1, result_path=str(tmp_path / "result.json"))
    checkpoint_path(options.result_path).write_text(
        json.dumps(
            {
                "version": 1,
                "fingerprint": "not this video",
                "batches": [{"batch_id": 1, "frames": 1, "start_time": 0.0, "end_time": 0.0, "description": "stale"}],
            }
        )
    )
    resumed = run_caption_graph(SAMPLE_CLIP, options.replace(resume=True)).to_dict()
    assert untimed(resumed) == untimed(uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_keeps_only_the_checkpoint_and_resume_finishes(tmp_path, uninterrupted, signum, code):
    command = CLI
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "result.json.partial")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert stderr.strip().startswith("interrupted") and "--resume" in stderr and "Traceback" not in stderr
    assert [p.name for p in tmp_path.iterdir()] == ["result.json.partial"]  # no partial result

    done = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((tmp_path / "result.json").read_text())
    assert untimed(resumed) == untimed(uninterrupted)
