"""Live streams (videocaption/live/captioner.py): ffmpeg serves a generated MPEG-TS stream on loopback and the
CLI captions it with the tiny checkpoint, as a user would run it."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import fake_openai
import pytest
from helpers import CLI, FAST_FLAGS, run_cli, stderr_lines

from videocaption.errors import InvalidOptionError
from videocaption.live.captioner import is_live_input
from videocaption.live.stream import LatestFrames, LiveFrame, StreamClock, read_url
from videocaption.options import CaptionOptions
from videocaption.outputs.writers import JsonlWriter

STARTUP_S = 60  # model load and FFmpeg's stream probing (about 5 s) on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(port: int, seconds: float, *, rate: int = 25, size: str = "160x120") -> subprocess.Popen:
    """ffmpeg serving a generated stream in real time (``-re``) as MPEG-TS to one TCP client on loopback."""
    return subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={rate}",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            str(rate),
            "-f",
            "mpegts",
            f"tcp://127.0.0.1:{port}?listen=1",
        ],
        stdin=subprocess.DEVNULL,
    )


def caption_live(url: str, tmp_path: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *CLI,
            url,
            "--output",
            str(tmp_path / "result.json"),
            "--jsonl",
            str(tmp_path / "live.jsonl"),
            *flags,
            *FAST_FLAGS,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "live.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()


@contextlib.contextmanager
def stopped_afterwards(*processes: subprocess.Popen) -> Iterator[None]:
    """Kill whichever of ``processes`` still run when the block ends, passed or failed."""
    try:
        yield
    finally:
        for process in processes:
            stop(process)


# -- the parts --------------------------------------------------------------------------------


def test_live_inputs_are_urls_of_live_protocols_or_hls_or_asked_for():
    for url in (
        "rtsp://cam/1",
        "rtmp://x/live",
        "srt://1.2.3.4:9000",
        "udp://127.0.0.1:1234",
        "tcp://h:1",
        "https://cdn/x/index.m3u8?token=1",
    ):
        assert is_live_input(url)
    for source in ("video.mp4", "https://site/video.mp4", "file.m3u8"):
        assert not is_live_input(source)
    assert is_live_input("growing.ts", live=True)


def test_when_the_model_falls_behind_the_oldest_frames_are_dropped_and_counted():
    frames = LatestFrames(capacity=3)
    for second in range(5):
        frames.put(LiveFrame(image=None, stream_time=float(second), arrived=0.0))
    assert len(frames) == 3 and frames.dropped == 2
    assert [f.stream_time for f in frames.take(2)] == [2.0, 3.0]
    frames.close(drain=True)
    assert [f.stream_time for f in frames.take(2)] == [4.0]
    assert frames.take(2) == []


def test_a_stopped_run_does_not_describe_what_waits():
    frames = LatestFrames(capacity=3)
    frames.put(LiveFrame(image=None, stream_time=0.0, arrived=0.0))
    frames.close(drain=False)
    assert frames.take(4) == []


def test_stream_time_keeps_going_up_across_reconnections():
    clock = StreamClock(fps=1.0, same_timeline=False)
    assert [clock.stream_time(t, arrived=100.0 + t) for t in (0.0, 1.0, 2.0)] == [0.0, 1.0, 2.0]
    clock.reconnected()  # the new connection starts at 0 again, 10 s of wall clock later
    assert clock.stream_time(0.0, arrived=112.0) == 12.0
    assert clock.stream_time(1.0, arrived=113.0) == 13.0


def test_a_reread_growing_file_skips_the_frames_already_seen():
    clock = StreamClock(fps=1.0, same_timeline=True)
    assert [clock.stream_time(t, arrived=0.0) for t in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]
    assert clock.resume_at == 1.0
    clock.reconnected()  # reopened at 1.0: the decoder's times start at 0 there
    assert clock.stream_time(0.0, arrived=0.0) is None
    assert clock.stream_time(0.5, arrived=0.0) == 1.5


def test_udp_urls_get_ffmpegs_read_timeout_and_others_pass_as_they_are():
    assert read_url("udp://127.0.0.1:1234", 2.5) == ("udp://127.0.0.1:1234?timeout=2500000", True)
    assert read_url("udp://h:1?pkt_size=1316", 1) == ("udp://h:1?pkt_size=1316&timeout=1000000", True)
    assert read_url("udp://h:1?timeout=5", 1) == ("udp://h:1?timeout=5", True)
    assert read_url("rtsp://cam/1", 1) == ("rtsp://cam/1", False)


def test_jsonl_records_are_whole_lines_written_at_once():
    buffer = io.StringIO()
    writer = JsonlWriter(buffer)
    writer.write({"type": "batch", "description": "a line\nbreak"})
    writer.write({"type": "summary"})
    assert [json.loads(line)["type"] for line in buffer.getvalue().splitlines()] == ["batch", "summary"]


def test_live_options_are_checked():
    with pytest.raises(InvalidOptionError, match="summary_all needs summary_every"):
        CaptionOptions(summary_all=True)
    with pytest.raises(InvalidOptionError, match="max_pending_frames must be at least 4"):
        CaptionOptions(max_pending_frames=2)
    with pytest.raises(InvalidOptionError, match="jsonl_path"):
        CaptionOptions(result_path="result.json", jsonl_path="result.json")  # (the CLI's result file)
    assert CaptionOptions(batch_size=3).pending_frames == 6


@pytest.mark.slow
def test_live_only_flags_are_refused_for_a_file(tmp_path, small_clip):
    done = run_cli(str(small_clip), "--jsonl", "x.jsonl", "--summary-every", "5", cwd=tmp_path)
    assert done.returncode == 2
    assert stderr_lines(done) == [
        "error: --jsonl, --summary-every only apply to live streams (a live URL, or --live) (see --help)"
    ]
    done = run_cli(str(small_clip), "--live", "--workers", "2", cwd=tmp_path)
    assert done.returncode == 2 and len(stderr_lines(done)) == 1


# -- the CLI on a stream ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_stream_is_captioned_as_it_plays_in_stream_order(tmp_path):
    port = free_port()
    server = serve(port, seconds=12)
    cli = caption_live(
        f"tcp://127.0.0.1:{port}",
        tmp_path,
        "--fps",
        "2",
        "--batch-size",
        "3",
        "--reconnect",
        "0",
        "--summary-every",
        "3",
        "--srt",
        "--vtt",
    )
    with stopped_afterwards(server, cli):
        out, err = cli.communicate(timeout=STARTUP_S + 60)
    assert cli.returncode == 0, err
    lines = records(tmp_path)
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "final"
    batches = [r for r in lines if r["type"] == "batch"]
    assert len(batches) >= 2
    assert [b["batch_id"] for b in batches] == list(range(1, len(batches) + 1))
    starts = [b["start_time"] for b in batches]
    assert starts == sorted(starts) and all(b["start_time"] <= b["end_time"] for b in batches)
    # The first record follows its last frame within seconds: one model call on the tiny checkpoint
    # (about 1 s alone; the bound leaves room for a machine shared with other work).
    assert batches[0]["latency"] < 15, batches[0]
    windows = [r for r in lines if r["type"] == "summary" and r["scope"] == "window"]
    assert windows and all(w["summary"] for w in windows)
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["batches"]) == len(batches) and result["summary"]
    assert result["live"]["ended_by"] == "the stream ended" and result["live"]["reconnects"] == 0
    srt = (tmp_path / "result.srt").read_text()
    assert srt.count(" --> ") == len(batches)
    assert (tmp_path / "result.vtt").read_text().startswith("WEBVTT")
    assert "Title: " in out


@pytest.mark.slow
def test_a_dropped_stream_is_reconnected_and_sigint_ends_with_a_final_summary(tmp_path):
    port = free_port()
    server = serve(port, seconds=7)
    cli = caption_live(
        f"tcp://127.0.0.1:{port}",
        tmp_path,
        "--fps",
        "2",
        "--batch-size",
        "3",
        "--reconnect",
        "10",
        "--reconnect-delay",
        "0.5",
        "--srt",
    )
    with stopped_afterwards(server, cli):
        wait_for(lambda: any(r["type"] == "batch" for r in records(tmp_path)), STARTUP_S, cli)
        server.wait(timeout=30)  # the stream stops...
        first_run = max(r["end_time"] for r in records(tmp_path) if r["type"] == "batch")
        time.sleep(1.5)
        server = serve(port, seconds=60)  # ...and comes back on the same address
        wait_for(
            lambda: any(r["type"] == "batch" and r["start_time"] > first_run + 1 for r in records(tmp_path)), 60, cli
        )
        # The subtitles grow with the cues and are whole at every moment.
        assert (tmp_path / "result.srt").read_text().startswith("1\n00:00:00,000 --> ")
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    notes = [line for line in stderr_lines(subprocess.CompletedProcess([], 0, out, err)) if "reconnecting" in line]
    assert notes and all(line.startswith("WARNING: tcp://127.0.0.1") for line in notes)
    final = records(tmp_path)[-1]
    assert final["type"] == "final" and final["ended_by"] == "SIGINT" and final["summary"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["live"]["reconnects"] >= 1 and result["video_title"]
    starts = [b["start_time"] for b in result["batches"]]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def send_udp(port: int, seconds: float) -> subprocess.Popen:
    """ffmpeg sending a generated MPEG-TS stream in real time to a UDP port on loopback."""
    return subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-f",
            "mpegts",
            f"udp://127.0.0.1:{port}?pkt_size=1316",
        ],
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_a_stalled_udp_stream_is_reconnected(tmp_path):
    """UDP has no end of stream: the sender just stops. FFmpeg gives up after --stall-timeout, the
    port is let go, and the next connection picks the stream up again when it resumes."""
    port = free_port()
    cli = caption_live(
        f"udp://127.0.0.1:{port}",
        tmp_path,
        "--fps",
        "2",
        "--batch-size",
        "3",
        "--reconnect",
        "20",
        "--reconnect-delay",
        "0.5",
        "--stall-timeout",
        "2",
    )
    sender = None
    try:
        wait_for(lambda: records(tmp_path), STARTUP_S, cli)  # the model is loaded: the port is being read
        sender = send_udp(port, seconds=10)  # FFmpeg probes a new stream for about 5 s
        wait_for(lambda: any(r["type"] == "batch" for r in records(tmp_path)), 60, cli)
        sender.wait(timeout=30)
        first_run = max(r["end_time"] for r in records(tmp_path) if r["type"] == "batch")
        time.sleep(4)  # the stream stalls: longer than --stall-timeout
        sender = send_udp(port, seconds=60)
        wait_for(
            lambda: any(r["type"] == "batch" and r["start_time"] > first_run + 1 for r in records(tmp_path)), 60, cli
        )
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    finally:
        if sender is not None:
            stop(sender)
        stop(cli)
    assert cli.returncode == 0, err
    notes = [line for line in err.splitlines() if "reconnecting in" in line]
    assert notes and all(line.startswith(f"WARNING: udp://127.0.0.1:{port}") for line in notes)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["live"]["reconnects"] >= 1 and result["live"]["ended_by"] == "SIGINT"


@pytest.mark.slow
@pytest.mark.parametrize("attempts", [0, 2])
def test_an_unreachable_stream_is_one_line_and_exit_2(tmp_path, attempts):
    cli = caption_live(
        f"tcp://127.0.0.1:{free_port()}", tmp_path, "--reconnect", str(attempts), "--reconnect-delay", "0.1"
    )
    out, err = cli.communicate(timeout=STARTUP_S)
    assert cli.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: tcp://127.0.0.1:") and "Connection refused" in lines[-1]
    assert len(lines) == 1 + attempts  # a note per reconnect attempt, then the error
    if attempts:
        assert lines[-1].endswith(f"after {attempts} reconnect attempts")
    assert not (tmp_path / "result.json").exists()


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.mark.slow
def test_memory_stays_flat_on_a_fast_stream_and_sigterm_ends_the_run(tmp_path):
    """100 frames a second for 30 s, the model behind all along (a longer soak: benchmarks/bench_live.py)."""
    port = free_port()
    server = serve(port, seconds=120, rate=100, size="320x240")
    # 25 sampled frames a second: far more than the model describes, however idle the machine.
    cli = caption_live(
        f"tcp://127.0.0.1:{port}",
        tmp_path,
        "--fps",
        "25",
        "--batch-size",
        "3",
        "--max-pending-frames",
        "3",
        "--reconnect",
        "0",
    )
    samples = []
    with stopped_afterwards(server, cli):
        # Warm: the model loaded, the stream open, a few batches described (and frames dropped).
        wait_for(lambda: sum(r["type"] == "batch" for r in records(tmp_path)) >= 3, STARTUP_S, cli)
        for _ in range(30):
            samples.append(rss_mib(cli.pid))
            time.sleep(1)
        cli.send_signal(signal.SIGTERM)
        out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    # The picture being converted and the model's activations come and go (RSS swings by about
    # 20 MiB from one second to the next); a leak raises the floor. Keeping every frame would
    # add about 170 MiB over the 30 s.
    first, last = statistics.median(samples[:10]), statistics.median(samples[-10:])
    assert last - first < 20, samples  # MiB
    final = records(tmp_path)[-1]
    assert final["type"] == "final" and final["ended_by"] == "SIGTERM"
    assert final["dropped_frames"] > 0  # the model was behind: the newest frames won
    assert json.loads((tmp_path / "result.json").read_text())["live"]["ended_by"] == "SIGTERM"


@pytest.mark.slow
def test_a_growing_file_is_followed_until_it_stops_growing(tmp_path):
    growing = tmp_path / "growing.ts"
    writer = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-f",
            "mpegts",
            str(growing),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: growing.exists() and growing.stat().st_size > 0, 30, writer)
        cli = caption_live(
            str(growing),
            tmp_path,
            "--live",
            "--fps",
            "1",
            "--batch-size",
            "3",
            "--stall-timeout",
            "4",
            "--reconnect-delay",
            "0.5",
            "--max-pending-frames",
            "30",
        )
        out, err = cli.communicate(timeout=STARTUP_S + 60)
    finally:
        stop(writer)
    assert cli.returncode == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    spans = [(b["start_time"], b["end_time"]) for b in result["batches"]]
    assert all(start <= end for start, end in spans)
    assert all(end < next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # no frame twice
    assert result["frames_analysed"] == 10  # one a second of 10 s, every one kept (room for 30 waiting)
    assert result["live"]["ended_by"].startswith("the file stopped growing")


@pytest.mark.slow
def test_rolling_summaries_of_the_window_and_of_everything_so_far(tmp_path):
    """LiveRun on its own (no stream): frames handed over as the reader would, 1 s apart; a window
    is complete when a batch covers its end (its last frame stands for the second after it)."""
    from helpers import FAST
    from PIL import Image

    from videocaption.live.captioner import LiveRun

    options = CaptionOptions(
        **FAST,
        batch_size=3,
        result_path=str(tmp_path / "result.json"),
        jsonl_path=str(tmp_path / "live.jsonl"),
        summary_every=3.0,
        summary_all=True,
        srt_path=str(tmp_path / "result.srt"),
    )
    frames = LatestFrames(capacity=9)
    run = LiveRun("test://frames", options, frames)
    for second in range(9):
        frames.put(
            LiveFrame(
                image=Image.new("RGB", (64, 48), (second * 20, 80, 160)), stream_time=float(second), arrived=time.time()
            )
        )
    frames.close(drain=True)
    run.start()
    run.join()
    assert run.failure is None
    result = run.finish("the test ended")
    kinds = [(r["type"], r.get("scope")) for r in records(tmp_path)]
    assert kinds == [("start", None)] + [("batch", None), ("summary", "window"), ("summary", "all")] * 3 + [
        ("final", None)
    ]
    windows = [r for r in records(tmp_path) if r.get("scope") == "window"]
    assert [(w["start_time"], w["end_time"]) for w in windows] == [(0.0, 2.0), (3.0, 5.0), (6.0, 8.0)]
    assert [r["batches"] for r in records(tmp_path) if r.get("scope") == "all"] == [1, 2, 3]
    assert result.to_dict()["live"]["summaries"] == [{k: v for k, v in w.items() if k != "wall_time"} for w in windows]
    assert (tmp_path / "result.srt").read_text().count(" --> ") == 3


# -- a failing server or output does not lose the run (issue 26: 4, 14, 15) -------------------------


@pytest.fixture(scope="module")
def recorded_stream(tmp_path_factory) -> Path:
    """A finished 6 s MPEG-TS file: under ``--live`` it is read whole, then the run ends when it
    does not grow for ``--stall-timeout`` (1 s here)."""
    path = tmp_path_factory.mktemp("recorded") / "stream.ts"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-t",
            "6",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "mpegts",
            str(path),
        ],
        check=True,
    )
    return path


def served_live(stream: Path, server, tmp_path: Path, jsonl: str, **popen) -> subprocess.Popen:
    """A live CLI run of ``stream`` against the fake OpenAI server (no model to load: it starts fast),
    4 frames a second in batches of 2, every frame kept."""
    return subprocess.Popen(
        [
            *CLI,
            str(stream),
            "--live",
            "--backend",
            "openai",
            "--api-base",
            server.url,
            "--model",
            "m",
            "--max-retries",
            "0",
            "--max-new-tokens",
            "8",
            "--fps",
            "4",
            "--batch-size",
            "2",
            "--max-pending-frames",
            "100",
            "--stall-timeout",
            "1",
            "--reconnect-delay",
            "0.2",
            "--output",
            str(tmp_path / "result.json"),
            "--jsonl",
            jsonl,
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def slow_completion(seconds: float):
    def answer(request):
        time.sleep(seconds)
        return fake_openai.completion()

    return answer


@pytest.mark.slow
def test_a_server_that_stays_down_fails_its_batches_and_the_run_ends_with_a_result(recorded_stream, tmp_path):
    """Issue 26, 4: the server answers three batches, then 500 for good. Before: exit 2, no
    result.json, no final record. Now the stream goes on: each batch it could not describe is
    recorded with its error, the summary and title are left empty, and the run ends as usual
    (exit 3, as a file run with a failed batch)."""
    answers = iter([fake_openai.completion()] * 3)
    down = (500, "application/json", b'{"error": {"message": "down"}}')
    with fake_openai.FakeOpenAI(chat=lambda request: next(answers, down)) as server:
        cli = served_live(recorded_stream, server, tmp_path, str(tmp_path / "live.jsonl"), stdout=subprocess.PIPE)
        with stopped_afterwards(cli):
            out, err = cli.communicate(timeout=60)
    assert cli.returncode == 3, err
    assert "Traceback" not in err and "error:" not in err
    lines = records(tmp_path)
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "final"
    batches = [r for r in lines if r["type"] == "batch"]
    assert [b["batch_id"] for b in batches] == list(range(1, 13))  # 6 s at 4 frames a second, 2 a batch
    assert all("error" not in b for b in batches[:3])
    assert all("BackendError" in b["error"] and server.url in b["error"] for b in batches[3:])
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["batches"]) == 12 and result["summary"] == "" and result["video_title"] == ""
    assert result["live"]["ended_by"].startswith("the file stopped growing")


@pytest.mark.slow
def test_a_jsonl_reader_that_goes_away_ends_the_run_with_its_result(recorded_stream, tmp_path):
    """Issue 26, 14: ``--jsonl - | head -1``. Before: a BrokenPipeError traceback, exit 120, no
    result.json. Now the run ends as a stop does, quietly, with exit 0 and result.json."""
    with fake_openai.FakeOpenAI(chat=slow_completion(0.2)) as server:
        cli = served_live(recorded_stream, server, tmp_path, "-", stdout=subprocess.PIPE)
        with stopped_afterwards(cli):
            first = json.loads(cli.stdout.readline())
            cli.stdout.close()  # as `head -1` does
            err = cli.stderr.read()
            cli.wait(timeout=60)
    assert first["type"] == "start"
    assert cli.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error:" not in err, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["live"]["ended_by"] == "the JSONL reader closed the pipe"
    assert result["batches"] and result["video_title"]


@pytest.fixture
def small_disk(tmp_path):
    from test_exit_paths import small_disk as fixture

    yield from fixture.__wrapped__(tmp_path)


@pytest.mark.slow
def test_a_full_disk_for_the_jsonl_keeps_its_lines_whole_and_writes_the_result(recorded_stream, small_disk, tmp_path):
    """Issue 26, 15: the JSONL's disk fills mid-run. Before: a torn last line, exit 2, no
    result.json. Now every line stays whole, result.json (on another disk) keeps what was
    described, and the error is one line, exit 2."""
    disk, fill = small_disk
    fill(1)  # 4 KiB: room for some ten records
    jsonl = disk / "live.jsonl"
    with fake_openai.FakeOpenAI() as server:
        cli = served_live(recorded_stream, server, tmp_path, str(jsonl), stdout=subprocess.PIPE)
        with stopped_afterwards(cli):
            out, err = cli.communicate(timeout=60)
    assert cli.returncode == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(jsonl) in errors[0] and "No space left" in errors[0], err
    text = jsonl.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line whole
    written = [r for r in lines if r["type"] == "batch"]
    assert written and lines[-1]["type"] == "batch"
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["batches"]) >= len(written)
    assert result["live"]["ended_by"].startswith("the JSONL output failed")


def test_a_restarted_run_cuts_a_torn_last_line_before_appending(tmp_path):
    """Issue 26, 15: a run killed mid-write leaves a torn line; the next run's records start on
    a line of their own."""
    path = tmp_path / "live.jsonl"
    path.write_text('{"type": "start"}\n{"type": "batch", "desc')
    writer = JsonlWriter(path)
    writer.write({"type": "start"})
    writer.close()
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["start", "start"]
    path.write_text('{"type": "batch", "no newline at all"')
    JsonlWriter(path).close()
    assert path.read_text() == ""


@pytest.mark.slow
def test_a_seeded_live_fuzz_try_passes():
    """One try of ``benchmarks.fuzz_inputs --mode live`` (seed 3: a server answering some 500s,
    SIGINT mid-run, then a rerun): nothing lost, nothing twice, the JSONL valid."""
    from benchmarks.fuzz_inputs import fuzz_runs, report

    outcomes = fuzz_runs("live", 0.0, 3, 120.0, tries=1, log=lambda line: None)
    assert not any(o.problem for o in outcomes), report(outcomes)
