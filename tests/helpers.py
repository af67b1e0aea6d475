"""Paths, the CLI runner and clip makers shared by the tests (imported explicitly; fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from videocaption.result import untimed  # noqa: F401 - re-exported for the tests

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CLIP = REPO_ROOT / "big_bunny_5s_25fps.mp4"
SAMPLE_DURATION = 5.28  # seconds of video in the sample clip (132 frames at 25 fps)
# The DeepSeek-VL2 reference fixtures: PARITY_FIXTURES points at another set of the same layout.
FIXTURES = Path(os.environ.get("PARITY_FIXTURES", REPO_ROOT / "tests" / "fixtures" / "deepseek_vl2_reference"))
TINY_MODEL = REPO_ROOT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"

# Options that keep end-to-end runs on the tiny random checkpoint quick on 2 CPU cores.
FAST = {"model": str(TINY_MODEL), "device": "cpu", "max_new_tokens": 8}
# The same as command-line flags.
FAST_FLAGS = ["--model", FAST["model"], "--device", "cpu", "--max-new-tokens", "8"]
CLI = [sys.executable, str(REPO_ROOT / "test_llm_caption.py")]
CLI_TIMEOUT_S = 300  # far above any run in the tests: reaching it means the CLI hung


def run_cli(
    *args: str, cwd: Path, fast: bool = True, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run ``test_llm_caption.py`` as a user would, in ``cwd`` (with the tiny checkpoint when ``fast``)."""
    command = [*CLI, *args, *(FAST_FLAGS if fast else [])]
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def stderr_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The non-blank lines a run printed on stderr."""
    return [line for line in done.stderr.splitlines() if line.strip()]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_clip(path: Path, *args: str, duration: float = 2.0, size: str = "320x240", rate: int = 25) -> Path:
    """Generate a small yuv420p test video with ffmpeg (``args`` are extra output options)."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}:duration={duration}",
        "-pix_fmt",
        "yuv420p",
        *args,
        str(path),
    )
    return path


def video_frame_packet(rgb: np.ndarray, seconds: float):
    """A BMF packet holding an RGB VideoFrame stamped at ``seconds``."""
    import bmf
    import bmf.hmp as mp

    frame = bmf.VideoFrame(mp.Frame(mp.from_numpy(np.ascontiguousarray(rgb)), mp.PixelInfo(mp.kPF_RGB24)))
    packet = bmf.Packet(frame)
    packet.timestamp = round(seconds * 1_000_000)
    return packet
