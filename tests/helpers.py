"""Paths and small builders shared by the tests (imported explicitly, unlike conftest fixtures)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CLIP = REPO_ROOT / "big_bunny_5s_25fps.mp4"
SAMPLE_DURATION = 5.28  # seconds of video in the sample clip
TINY_MODEL = REPO_ROOT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"

# Options that keep end-to-end runs on the tiny random checkpoint quick on 2 CPU cores.
FAST = {"model": str(TINY_MODEL), "device": "cpu", "max_new_tokens": 8}


def video_frame_packet(rgb: np.ndarray, seconds: float):
    """A BMF packet holding an RGB VideoFrame stamped at ``seconds``."""
    import bmf
    import bmf.hmp as mp

    frame = bmf.VideoFrame(mp.Frame(mp.from_numpy(np.ascontiguousarray(rgb)), mp.PixelInfo(mp.kPF_RGB24)))
    packet = bmf.Packet(frame)
    packet.timestamp = round(seconds * 1_000_000)
    return packet


def make_clip(path: Path, *args: str, duration: float = 2.0, size: str = "320x240", rate: int = 25) -> Path:
    """Generate a small test video with ffmpeg (``args`` are extra output options)."""
    command = [
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
        f"testsrc2=size={size}:rate={rate}:duration={duration}", *args, str(path),
    ]
    subprocess.run(command, check=True)
    return path
