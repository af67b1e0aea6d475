"""Broken inputs: exit code 2 and one line naming the problem; never a hang, a traceback or a result.

Every input is made at test time and given to the CLI in a subprocess, the way a user runs it.
A short seeded fuzz run (benchmarks/fuzz_inputs.py) closes the file.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import CLI_TIMEOUT_S as RUN_TIMEOUT_S
from helpers import FAST, ffmpeg, make_clip, run_cli

from videocaption.errors import VideoInputError
from videocaption.graph.runner import wait_for_graph
from videocaption.graph.watchdog import Activity


def small_clip(path: Path, *extra: str, duration: float = 2.0) -> Path:
    return make_clip(path, *extra, duration=duration, size="160x120")


def assert_rejected(done: subprocess.CompletedProcess, cwd: Path, *expected: str) -> str:
    """Exit 2, stderr exactly one ``error: ...`` line holding every ``expected`` text, no result."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (cwd / "result.json").exists()
    assert not list(cwd.glob("*.partial"))
    return lines[0]


# -- files that are not videos ----------------------------------------------------------------


def test_empty_file(tmp_path):
    video = tmp_path / "empty.mp4"
    video.touch()
    assert_rejected(run_cli(str(video), cwd=tmp_path), tmp_path, str(video), "empty file")


@pytest.mark.slow
def test_truncated_mp4(tmp_path):
    """An MP4 cut short before its index (moov atom, written last by default)."""
    whole = small_clip(tmp_path / "whole.mp4")
    video = tmp_path / "truncated.mp4"
    video.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_rejected(run_cli(str(video), cwd=tmp_path), tmp_path, str(video), "moov atom not found", "truncated")


@pytest.mark.slow
def test_truncated_mp4_with_its_index_first_and_no_frame_data(tmp_path):
    """A fast-start MP4 cut just after its index: it opens, but no frame decodes."""
    whole = small_clip(tmp_path / "whole.mp4", "-movflags", "+faststart")
    data = whole.read_bytes()
    mdat = data.index(b"mdat") + 4
    video = tmp_path / "cut.mp4"
    video.write_bytes(data[: mdat + 600])
    line = assert_rejected(run_cli(str(video), cwd=tmp_path), tmp_path, str(video))
    assert "cannot be decoded" in line or "no video frame could be decoded" in line


def test_random_bytes_with_a_video_extension(tmp_path):
    video = tmp_path / "noise.mp4"
    video.write_bytes(random.Random(8).randbytes(64 * 1024))
    assert_rejected(run_cli(str(video), cwd=tmp_path), tmp_path, str(video), "not a video file")


def test_audio_only_file(tmp_path):
    video = tmp_path / "song.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(video))
    assert_rejected(run_cli(str(video), cwd=tmp_path), tmp_path, str(video), "no video stream", "audio")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["still.png", "still.jpg", "still_renamed.mp4"])
def test_image_file_is_not_a_video(tmp_path, name):
    """A single picture is refused (even named .mp4): a caption of a video needs a video."""
    image = tmp_path / name
    codec = ["-c:v", "png", "-f", "image2"] if name.endswith(".mp4") else []
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "1", *codec, str(image))
    assert_rejected(run_cli(str(image), cwd=tmp_path), tmp_path, str(image), "still image, not a video")


def test_directory_without_videos(tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "notes.txt").write_text("no videos here")
    assert_rejected(run_cli(str(folder), cwd=tmp_path), tmp_path, str(folder), "no video files")


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_unreadable_file(tmp_path):
    video = small_clip(tmp_path / "secret.mp4", duration=0.2)
    video.chmod(0)
    try:
        if os.access(video, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): mode 000 does not stop reading")
        assert_rejected(run_cli(str(video), cwd=tmp_path), tmp_path, str(video), "permission denied")
    finally:
        video.chmod(0o644)


@pytest.mark.slow
def test_mostly_undecodable_video_is_one_line_not_a_crash(tmp_path):
    """The decoder gives up (most packets fail) while the model is working: exit 2, no abort.

    BMF abandons the whole graph then, without closing the module; a model thread left running
    used to abort the interpreter at exit ("terminate called without an active exception").
    """
    whole = small_clip(tmp_path / "whole.mp4", "-g", "25", "-movflags", "+faststart", duration=20)
    data = bytearray(whole.read_bytes())
    keep = len(data) // 4
    data[keep:] = bytes(len(data) - keep)
    video = tmp_path / "damaged.mp4"
    video.write_bytes(bytes(data))
    assert_rejected(
        run_cli(str(video), cwd=tmp_path), tmp_path, str(video), "cannot be decoded", "packets failed to decode"
    )


# -- the time bound on decoding progress -------------------------------------------------------


class BlockedGraph:
    """A graph whose decoder never delivers: ``close`` blocks until ``force_close``."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def run(self, node, is_blocked=False) -> None:
        pass

    def close(self) -> None:
        self.released.wait(30)

    def force_close(self) -> None:
        self.released.set()


def test_a_decoder_that_delivers_nothing_is_given_up_on_in_bounded_time():
    graph, activity, stopped = BlockedGraph(), Activity(), []
    activity.on_abandon(lambda: stopped.append(True))  # the module stops its model thread here
    started = time.monotonic()
    with pytest.raises(VideoInputError, match="stalled.*no frame in 0.5 s"):
        wait_for_graph(graph, node=object(), activity=activity, stall_timeout=0.5, video_path="stuck.mp4")
    assert time.monotonic() - started < 5
    assert activity.abandoned and stopped == [True]
    assert graph.released.wait(5), "the stalled graph is force-closed"


# -- fuzzing -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fuzzed_copies_of_a_clip_are_captioned_or_rejected_cleanly(tmp_path):
    """Five seeded mutations of a small clip through the CLI (see benchmarks/fuzz_inputs.py)."""
    from benchmarks.fuzz_inputs import fuzz, report

    clip = tmp_path / "clip.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=25:duration=2",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=2",
        "-pix_fmt",
        "yuv420p",
        "-shortest",
        "-movflags",
        "+faststart",
        str(clip),
    )
    outcomes = fuzz(
        seconds=0,
        seed=0,
        video=clip,
        model=Path(FAST["model"]),
        run_timeout=RUN_TIMEOUT_S,
        tries=5,
        log=lambda line: None,
    )
    assert len(outcomes) == 5
    assert not [o for o in outcomes if o.problem], report(outcomes)
