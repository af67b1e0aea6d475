"""Bad input: exit code 2, one line naming the problem, no traceback, no result file."""

import subprocess
import sys

import pytest
from helpers import REPO_ROOT, SAMPLE_CLIP, TINY_MODEL, ffmpeg, run_cli, stderr_lines


def assert_clean_failure(done, cwd, expected: str):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = stderr_lines(done)
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (cwd / "result.json").exists()


def test_missing_file(tmp_path):
    done = run_cli(str(tmp_path / "nope.mp4"), cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "no such file")


def test_not_a_video(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_bytes(b"these are not the frames you are looking for" * 100)
    done = run_cli(str(bogus), cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "not a video file")


def test_video_without_video_stream(tmp_path):
    audio = tmp_path / "sound.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", str(audio))
    done = run_cli(str(audio), cwd=tmp_path)
    assert_clean_failure(done, tmp_path, "no video stream")


@pytest.mark.slow
def test_model_that_cannot_be_found(tmp_path):
    done = run_cli(str(SAMPLE_CLIP), "--model", str(tmp_path / "no-such-model"), cwd=tmp_path, fast=False)
    assert_clean_failure(done, tmp_path, "no-such-model")


@pytest.mark.slow
def test_default_model_unavailable_points_to_the_smoke_test(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "test_llm_caption.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "deepseek-vl2-tiny" in done.stderr
    assert "--model" in done.stderr and "noise" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "error: batch_size must be at least 1, got 0 (see --help)"),
        (["--batch-size", "four"], "error: argument --batch-size: invalid int value: 'four' (see --help)"),
        (["--max-threads", "2"], "error: max_threads needs multithreading"),
        (["--multithreading", "--max-threads", "0"], "error: max_threads must be at least 1, got 0 (see --help)"),
        (["--fps", "-1"], "error: fps must be a positive number, got -1.0 (see --help)"),
        (["--fps", "nan"], "error: fps must be a positive number, got nan (see --help)"),
        (["--dtype", "int4"], "error: argument --dtype: invalid choice: 'int4'"),
        (["--colour", "red"], "error: unrecognized arguments: --colour red (see --help)"),
    ],
)
def test_invalid_options_are_one_line(tmp_path, args, message):
    done = run_cli(str(SAMPLE_CLIP), *args, cwd=tmp_path)
    assert done.returncode == 2
    [line] = stderr_lines(done)
    assert line.startswith(message), line
    assert done.stdout == ""
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_batch_size_too_large_is_refused_before_decoding(tmp_path):
    # With the default answer length (256 new tokens), 8 frames fit the tiny checkpoint's context.
    done = run_cli(
        str(SAMPLE_CLIP), "--model", str(TINY_MODEL), "--device", "cpu", "--batch-size", "12", cwd=tmp_path, fast=False
    )
    assert_clean_failure(done, tmp_path, "the largest batch that fits is 8")


@pytest.mark.parametrize("batch_size", [10**6, 10**9])
def test_an_absurd_batch_size_is_refused_in_constant_time(batch_size):
    """Issue 26 #3: 10**9 grew memory by 300 MB/s and ignored Ctrl-C; 10**6 took 54 s to refuse."""
    import time

    from helpers import FAST

    from videocaption.backends import load_model
    from videocaption.captioning.captioner import check_batch_fits
    from videocaption.errors import InvalidOptionError
    from videocaption.options import CaptionOptions

    options = CaptionOptions(**{**FAST, "batch_size": batch_size})
    model = load_model(options)
    started = time.perf_counter()
    with pytest.raises(
        InvalidOptionError, match=f"batch_size {batch_size} does not fit .* the largest batch that fits is"
    ):
        check_batch_fits(model, options)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    ("flags", "module", "expected"),
    [
        (["--backend", "openai", "--api-base", "http://localhost:1/v1"], "openai", "llm-caption[serve]"),
        (["--transcribe"], "silero_vad", "llm-caption[speech]"),
        (["--segments", "seg.parquet"], "pyarrow", "llm-caption[search]"),
        (["--workers", "2"], "ray", "llm-caption[ray]"),
    ],
)
def test_a_feature_whose_extra_is_missing_is_refused_up_front(tmp_path, monkeypatch, capsys, flags, module, expected):
    # It used to fail late with an unexpected ModuleNotFoundError (exit 1, "a bug").
    from videocaption.cli.main import main

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec answers None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main([str(SAMPLE_CLIP), *flags])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"needs {module}, which is not installed" in lines[0] and expected in lines[0], lines
    assert not (tmp_path / "result.json").exists()


def test_searching_a_parquet_table_without_pyarrow_names_the_extra(tmp_path, monkeypatch, capsys):
    # What the up-front check cannot foresee (the --index file's kind) fails as cleanly, later.
    from videocaption.cli.main import main

    (tmp_path / "segments.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["--search", "rabbit", "--index", str(tmp_path / "segments.parquet")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: reading a Parquet table needs pyarrow, which is not installed: pip install 'llm-caption[search]'"
    ]
