"""Bad input: exit code 2, one line naming the problem, no traceback, no result file."""

import subprocess
import sys

import pytest

from helpers import FAST, REPO_ROOT, SAMPLE_CLIP


def run_cli(*args: str, cwd):
    return subprocess.run([sys.executable, str(REPO_ROOT / "test_llm_caption.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_clean_failure(done, cwd, expected: str):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert any(expected in line for line in lines), lines
    assert not (cwd / "result.json").exists()


def test_missing_file(tmp_path):
    done = run_cli(str(tmp_path / "nope.mp4"), "--model", FAST["model"], cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "no such file")


def test_not_a_video(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_bytes(b"these are not the frames you are looking for" * 100)
    done = run_cli(str(bogus), "--model", FAST["model"], cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "not a video file")


def test_video_without_video_stream(tmp_path):
    audio = tmp_path / "sound.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(audio)], check=True)
    done = run_cli(str(audio), "--model", FAST["model"], cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "no video stream")


def test_model_that_cannot_be_found(tmp_path):
    done = run_cli(str(SAMPLE_CLIP), "--model", str(tmp_path / "no-such-model"), cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "no-such-model")


def test_default_model_unavailable_points_to_the_smoke_test(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "test_llm_caption.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "deepseek-vl2-tiny" in done.stderr
    assert "--model" in done.stderr and "noise" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--max-threads", "2"], "--max-threads needs --multithreading"),
    (["--fps", "-1"], "fps must be a positive number"),
])
def test_invalid_options(tmp_path, args, message):
    done = run_cli(str(SAMPLE_CLIP), "--model", FAST["model"], *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "result.json").exists()


def test_batch_size_too_large_is_refused_before_decoding(tmp_path):
    done = run_cli(str(SAMPLE_CLIP), "--model", FAST["model"], "--device", "cpu", "--batch-size", "12", cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "the largest batch that fits is 8")
