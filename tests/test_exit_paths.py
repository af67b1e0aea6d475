"""Every way a CLI run ends keeps the README's promises.

One line on stderr (plus the resume hint where a checkpoint is kept), a documented exit code, no
temporary log left behind, and result or subtitle files only for a finished run: written all
together, never a partial set, never replacing a finished result with less.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import CLI, FAST, FAST_FLAGS, REPO_ROOT, SAMPLE_CLIP, ffmpeg, run_cli, stderr_lines

FINISHED = {"video_title": "an earlier, finished run", "batches": [], "summary": "kept"}


def private_tmp(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A TMPDIR of its own, to show that a run leaves no temporary log behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return tmp, {"TMPDIR": str(tmp)}


def temporary_logs(tmp: Path) -> list[Path]:
    return list(tmp.glob("llm_caption_*"))  # (torch keeps its compile cache there too)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# -- output paths that cannot be written --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--output", "taken"], ["--srt", "taken"], ["--vtt", "taken"]])
def test_an_output_path_that_is_a_directory_is_one_line_and_leaves_nothing(tmp_path, flags):
    tmp, env = private_tmp(tmp_path)
    (tmp_path / "taken").mkdir()
    done = run_cli(str(SAMPLE_CLIP), *flags, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert stderr_lines(done) == ["error: taken: is a directory; give a file name"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "tmp"]
    assert not list((tmp_path / "taken").iterdir())
    assert not temporary_logs(tmp)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root); yields (folder, fill) where fill(n) leaves n free 4 KiB pages."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")

    def fill(free_pages: int) -> None:
        stats = os.statvfs(disk)
        (disk / "filler").write_bytes(bytes(stats.f_bavail * stats.f_frsize - free_pages * 4096))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_for_the_checkpoint_is_one_line_naming_path_and_cause(small_disk, tmp_path):
    disk, fill = small_disk
    fill(0)
    done = run_cli(str(SAMPLE_CLIP), "--output", str(disk / "r.json"), "--srt", "--vtt", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert stderr_lines(done) == [f"error: {disk / 'r.json.partial'}: cannot be written (No space left on device)"]
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


@pytest.mark.slow
def test_a_full_disk_at_the_end_writes_no_output_and_keeps_the_checkpoint(small_disk, tmp_path):
    disk, fill = small_disk
    # Room for the checkpoint (one page, two while it is replaced) but not for all three outputs.
    fill(3)
    done = run_cli(str(SAMPLE_CLIP), "--output", str(disk / "r.json"), "--srt", "--vtt", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = stderr_lines(done)
    assert line.startswith(f"error: {disk}/r.") and "cannot be written (No space left on device)" in line
    assert line.endswith("2 described batches are kept: run the same command with --resume to continue")
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "r.json.partial"]

    (disk / "filler").unlink()
    resumed = run_cli(str(SAMPLE_CLIP), "--output", str(disk / "r.json"), "--srt", "--vtt", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in disk.iterdir()) == ["r.json", "r.srt", "r.vtt"]


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_keeps_the_checkpoint_and_never_touches_a_finished_result(tmp_path, signum, code):
    tmp, env = private_tmp(tmp_path)
    (tmp_path / "result.json").write_text(json.dumps(FINISHED))
    process = subprocess.Popen(
        [*CLI, str(SAMPLE_CLIP), *FAST_FLAGS, "--batch-size", "1", "--srt", "--vtt"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    wait_for(tmp_path / "result.json.partial", process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines
    assert "described batches are saved in result.json.partial" in lines[0] and "--resume" in lines[0]
    assert stderr.splitlines() == lines  # one line, not a blank one before it (stderr is no terminal here)
    assert json.loads((tmp_path / "result.json").read_text()) == FINISHED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.json.partial", "tmp"]
    assert not temporary_logs(tmp)


SLOW_MODEL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from videocaption.deepseek_vl2 import DeepseekVL2
    from videocaption.cli.main import main

    def describe_batch(self, requests, **kwargs):  # never answers in time: the run is stopped first
        Path("describing").touch()
        time.sleep(120)

    DeepseekVL2.describe_batch = describe_batch
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_interrupted_before_any_batch_says_nothing_was_saved(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_MODEL, str(SAMPLE_CLIP), *FAST_FLAGS],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    wait_for(tmp_path / "describing", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "interrupted (Ctrl-C): no batch was described yet, so nothing was saved"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["describing"]


SECOND_SIGNAL = textwrap.dedent("""
    import os, signal, time
    from videocaption.cli.main import Interrupted, stop_signals_raise

    with stop_signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except Interrupted:
            print("first", flush=True)
            time.sleep(60)  # a slow clean-up: the second signal must not wait for it
""")


def test_a_second_signal_ends_at_once(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "first\n"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    assert time.monotonic() - started < 5


# -- odd inputs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_path_that_starts_with_a_dash_is_a_file_not_an_option(tmp_path, small_clip):
    shutil.copy(small_clip, tmp_path / "-x.mp4")
    done = run_cli("./-x.mp4", "--output", "r.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["frames_analysed"] == 2


@pytest.mark.slow
def test_an_animated_gif_is_captioned_as_a_video(tmp_path):
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10:duration=3", str(tmp_path / "anim.gif"))
    done = run_cli("anim.gif", "--output", "r.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["frames_analysed"] == 3
    assert [b["start_time"] for b in result["batches"]] == [0.0]


@pytest.mark.slow
def test_a_folder_run_reports_skipped_files_on_stderr(tmp_path, small_clip):
    tmp, env = private_tmp(tmp_path)
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(small_clip, videos / "good.mp4")
    (videos / "bad.mp4").write_bytes(b"not a video at all" * 64)
    done = run_cli(str(videos), "--output-dir", "out", cwd=tmp_path, env=env)
    assert done.returncode == 2
    [line] = stderr_lines(done)
    assert line.startswith("skipped ") and "bad.mp4: not a video file" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json"]
    assert not temporary_logs(tmp)


@pytest.mark.slow
def test_stderr_of_a_finished_run_is_quiet(tmp_path):
    done = run_cli(str(SAMPLE_CLIP), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("Title: ") and len(done.stdout.splitlines()) == 3
    assert FAST["model"] not in done.stdout  # no graph dump


def test_the_progress_bar_of_a_finished_run_ends_at_100_percent():
    import io

    from videocaption.captioning.progress import Progress
    from videocaption.cli.main import ProgressBar
    from videocaption.media.probe import MediaInfo
    from videocaption.options import CaptionOptions

    # A 60.5 s container suggests 61 frames at 1 fps; the video stream gives 60.
    console = io.StringIO()
    bar = ProgressBar(MediaInfo(duration=60.5, width=320, height=240), CaptionOptions(), disable=False, file=console)
    bar(Progress(frames_sampled=60, batches_done=15, stage="describing"))
    bar(Progress(frames_sampled=60, batches_done=15, stage="done"))
    bar.close()
    last = console.getvalue().strip().split("\r")[-1]
    assert "60/60" in last and "100%" in last, last
