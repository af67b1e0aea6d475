"""Fuzz whole runs: seeded kills and server faults during library and live runs, then a rerun.

The ``library`` and ``live`` modes of :mod:`benchmarks.fuzz_inputs`. Every run uses the openai
backend against a fake server on loopback (``tests/fake_openai.py``: no model to load, answers
in milliseconds), whose faults are seeded:

- ``none``: every answer is a caption;
- ``errors``: about a third of the answers are HTTP 500;
- ``slow``: each answer waits up to 0.4 s;
- ``down``: after a few answers, 500 for good.

Each try makes one run with a seeded fault and, at a seeded time, a seeded signal (SIGINT,
SIGTERM or SIGKILL; or none), then reruns the same command against a healthy server. A try
passes when neither run printed a traceback, each exit code is one the docs give for what
happened, and after the rerun nothing is lost (every video, or every batch of the stream, is
described), nothing was done twice (a library video finished by the first run is not written
again; a live run describes no frame twice), and the manifest, its journal and the JSONL are
valid (every line parses: a line torn by SIGKILL is cut off by the rerun).

Every process a try starts (Ray's included) carries a marker in its environment and is killed
by its pid when the try ends, so a killed driver leaves nothing running.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests import fake_openai  # run from the checkout: python -m benchmarks.fuzz_inputs

FAULTS = ("none", "errors", "slow", "down")
KILLS = ("none", "SIGINT", "SIGTERM", "SIGKILL")
MARKER = "LLM_CAPTION_FUZZ_RUN"
SERVER_DOWN = (500, "application/json", b'{"error": {"message": "down (fuzz)"}}')
LIVE_SECONDS, LIVE_FPS, LIVE_BATCH = 6, 4, 2
LIVE_BATCHES = LIVE_SECONDS * LIVE_FPS // LIVE_BATCH
LIBRARY_VIDEOS = 3


class FaultyAnswers:
    """The fake server's chat answers under one seeded fault; ``heal()`` makes them all captions."""

    def __init__(self, fault: str, rng: random.Random) -> None:
        self.fault, self.rng, self.healed = fault, rng, False
        self.answered = 0
        self.down_after = rng.randint(1, 4)
        self._lock = threading.Lock()

    def heal(self) -> None:
        self.healed = True

    def __call__(self, request) -> tuple:
        with self._lock:
            self.answered += 1
            draw = self.rng.random()
            if self.healed or self.fault == "none":
                return fake_openai.completion()
            if self.fault == "errors" and draw < 0.35:
                return SERVER_DOWN
            if self.fault == "down" and self.answered > self.down_after:
                return SERVER_DOWN
        if self.fault == "slow":
            time.sleep(0.4 * draw)
        return fake_openai.completion()


def kill_marked(marker: str) -> None:
    """Kill, by pid, every process whose environment carries ``marker`` (a try's processes)."""
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def run_with_kill(
    command: list[str], cwd: Path, kill: str, at: float, timeout: float, marker: str
) -> tuple[int | None, str, bool]:
    """Run ``command``; send ``kill`` at ``at`` s unless it ended first.

    Returns (exit code, None on a hang; stderr; whether the signal was sent)."""
    env = {**os.environ, MARKER: marker}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent = False
    try:
        if kill != "none":
            try:
                process.wait(timeout=at)
            except subprocess.TimeoutExpired:
                process.send_signal(getattr(signal, kill))
                sent = True
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr, sent
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        return None, stderr, sent


def expected_codes(kill: str, sent: bool, normal: set[int]) -> set[int]:
    if not sent:
        return normal
    return {"SIGINT": {130}, "SIGTERM": {143}, "SIGKILL": {-9}}[kill] | normal


def jsonl_problem(path: Path, torn_allowed: bool) -> str | None:
    """A line of ``path`` that does not parse (the last one may be torn after a SIGKILL)."""
    if not path.exists():
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    elif torn_allowed:
        lines.pop()
    else:
        return f"{path.name}: its last line has no newline"
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError:
            return f"{path.name}: line {number} does not parse"
    return None


# -- live --------------------------------------------------------------------------------------


def make_stream(folder: Path) -> Path:
    path = folder / "stream.ts"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-t",
            str(LIVE_SECONDS),
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


def live_command(stream: Path, url: str) -> list[str]:
    """A live run reading a finished stream file whole, then ending when it does not grow for 1 s."""
    return [
        sys.executable,
        str(ROOT / "test_llm_caption.py"),
        str(stream),
        "--live",
        "--backend",
        "openai",
        "--api-base",
        url,
        "--model",
        "m",
        "--max-retries",
        "0",
        "--max-new-tokens",
        "8",
        "--fps",
        str(LIVE_FPS),
        "--batch-size",
        str(LIVE_BATCH),
        "--max-pending-frames",
        "100",
        "--stall-timeout",
        "1",
        "--reconnect-delay",
        "0.2",
        "--output",
        "result.json",
        "--jsonl",
        "live.jsonl",
    ]


def live_segments(path: Path) -> list[list[dict]]:
    """The JSONL's records, one list per run (each begins with a ``start`` record)."""
    segments: list[list[dict]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["type"] == "start" or not segments:
            segments.append([])
        segments[-1].append(record)
    return segments


def whole_starts(path: Path) -> int:
    """How many runs have a whole ``start`` line in the JSONL (a torn last line left out)."""
    if not path.exists():
        return 0
    return sum(line.startswith(b'{"type": "start"') for line in path.read_bytes().split(b"\n")[:-1])


def segment_problem(segment: list[dict], result: dict | None) -> str | None:
    """A run's records: batch ids 1..n in order, no frame in two batches, matching result.json."""
    batches = [r for r in segment if r["type"] == "batch"]
    if [b["batch_id"] for b in batches] != list(range(1, len(batches) + 1)):
        return "batch ids are not 1..n in order"
    if any(b["start_time"] > b["end_time"] for b in batches) or any(
        a["end_time"] >= b["start_time"] for a, b in zip(batches, batches[1:])
    ):
        return "a frame is in two batches, or batches out of order"
    if result is not None:
        if segment[-1]["type"] != "final":
            return "the run ended without a final record"
        if len(result["batches"]) != len(batches):
            return f"result.json has {len(result['batches'])} batches, the JSONL {len(batches)}"
    return None


def live_try(
    stream: Path, workdir: Path, fault: str, kill: str, at: float, rng: random.Random, run_timeout: float
) -> tuple[str, int | None, str | None, str]:
    """One live try; returns (detail, first exit code, problem, stderr)."""
    marker = uuid.uuid4().hex
    answers = FaultyAnswers(fault, rng)
    try:
        with fake_openai.FakeOpenAI(chat=answers) as server:
            command = live_command(stream, server.url)
            code, stderr, sent = run_with_kill(command, workdir, kill, at, run_timeout, marker)
            detail = f"{fault} server, {kill}" + (
                f" at {at:.1f} s" if sent else (" (after the end)" if kill != "none" else "")
            )
            problem = None
            first_segments = (
                live_segments(workdir / "live.jsonl") if (workdir / "live.jsonl").exists() and code != -9 else None
            )
            if code is None:
                problem = "no exit (a hang)"
            elif "Traceback" in stderr:
                problem = "a traceback on stderr"
            elif code not in expected_codes(kill, sent, {0, 3}):
                problem = f"exit {code}"
            elif code in (0, 3):
                result = json.loads((workdir / "result.json").read_text(encoding="utf-8"))
                problem = segment_problem(first_segments[-1], result) if first_segments else "no JSONL"
            if problem is not None:
                return detail, code, problem, stderr
            answers.heal()
            runs_before = whole_starts(workdir / "live.jsonl")
            (workdir / "result.json").unlink(missing_ok=True)
            rerun, stderr, _ = run_with_kill(command, workdir, "none", 0.0, run_timeout, marker)
        if rerun != 0 or "Traceback" in stderr:
            return (
                detail,
                code,
                f"the rerun exited {rerun}" + (" with a traceback" if "Traceback" in stderr else ""),
                stderr,
            )
        problem = jsonl_problem(workdir / "live.jsonl", torn_allowed=False)
        if problem is None:
            segments = live_segments(workdir / "live.jsonl")
            result = json.loads((workdir / "result.json").read_text(encoding="utf-8"))
            problem = segment_problem(segments[-1], result)
            if problem is None and [b["error"] for b in result["batches"] if b.get("error")]:
                problem = "the rerun against a healthy server has failed batches"
            if problem is None and len(result["batches"]) != LIVE_BATCHES:
                problem = f"the rerun described {len(result['batches'])} batches of {LIVE_BATCHES}"
            if problem is None and len(segments) != runs_before + 1:
                problem = f"the JSONL has {len(segments)} runs, not {runs_before + 1}"
        return detail, code, problem, stderr
    finally:
        kill_marked(marker)


# -- library -----------------------------------------------------------------------------------


def make_library(folder: Path) -> Path:
    library = folder / "library"
    library.mkdir()
    for index in range(LIBRARY_VIDEOS):
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"color=c=0x{40 * index + 30:02x}6080:size=160x120:rate=25",
                "-t",
                "2",
                "-pix_fmt",
                "yuv420p",
                str(library / f"v{index}.mp4"),
            ],
            check=True,
        )
    return library


def library_command(library: Path, url: str, output: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "test_llm_caption.py"),
        str(library),
        "--workers",
        "1",
        "--backend",
        "openai",
        "--api-base",
        url,
        "--model",
        "m",
        "--max-retries",
        "0",
        "--max-new-tokens",
        "8",
        "--fps",
        "2",
        "--batch-size",
        "2",
        "--output",
        str(output),
    ]


def journal_rows(output: Path) -> list[dict]:
    path = output / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def finished_results(output: Path) -> dict[str, tuple[int, int]]:
    """The ``ok`` videos' result.json files: path -> (inode, mtime in ns)."""
    finished = {}
    for row in journal_rows(output):
        result = output / row["key"] / "result.json"
        if row.get("status") == "ok" and result.exists():
            stat = result.stat()
            finished[str(result)] = (stat.st_ino, stat.st_mtime_ns)
    return finished


def manifest_problem(output: Path, library: Path) -> str | None:
    """The manifest: one ``ok`` row per video, each with its result.json."""
    import pyarrow.parquet as parquet

    rows = parquet.read_table(output / "manifest.parquet").to_pylist()
    paths = sorted(row["path"] for row in rows)
    if paths != sorted(str(path) for path in library.iterdir()):
        return f"the manifest lists {paths}"
    if any(row["status"] != "ok" for row in rows):
        return f"rows not ok after the rerun: {[(row['path'], row['status']) for row in rows if row['status'] != 'ok']}"
    for row in rows:
        json.loads((output / row["key"] / "result.json").read_text(encoding="utf-8"))
    return None


def library_try(
    library: Path, workdir: Path, fault: str, kill: str, at: float, rng: random.Random, run_timeout: float
) -> tuple[str, int | None, str | None, str]:
    """One library try; returns (detail, first exit code, problem, stderr)."""
    marker = uuid.uuid4().hex
    output = workdir / "out"
    answers = FaultyAnswers(fault, rng)
    try:
        with fake_openai.FakeOpenAI(chat=answers) as server:
            command = library_command(library, server.url, output)
            code, stderr, sent = run_with_kill(command, workdir, kill, at, run_timeout, marker)
            kill_marked(marker)  # a killed driver's Ray processes
            detail = f"{fault} server, {kill}" + (
                f" at {at:.1f} s" if sent else (" (after the end)" if kill != "none" else "")
            )
            problem = None
            if code is None:
                problem = "no exit (a hang)"
            elif "Traceback" in stderr:
                problem = "a traceback on stderr"
            elif code not in expected_codes(kill, sent, {0, 3}):
                problem = f"exit {code}"
            else:
                problem = jsonl_problem(output / "manifest.jsonl", torn_allowed=code == -9)
            if problem is not None:
                return detail, code, problem, stderr
            before = finished_results(output)
            answers.heal()
            rerun, stderr, _ = run_with_kill(command + ["--retry-failed"], workdir, "none", 0.0, run_timeout, marker)
        if rerun != 0 or "Traceback" in stderr:
            return (
                detail,
                code,
                f"the rerun exited {rerun}" + (" with a traceback" if "Traceback" in stderr else ""),
                stderr,
            )
        problem = jsonl_problem(output / "manifest.jsonl", torn_allowed=False) or manifest_problem(output, library)
        if problem is None:
            after = finished_results(output)
            again = [path for path, state in before.items() if after.get(path) != state]
            if again:
                problem = f"the rerun wrote again what the first run finished: {again}"
        return detail + f", {len(before)} of {LIBRARY_VIDEOS} finished first", code, problem, stderr
    finally:
        kill_marked(marker)


ROOT = Path(__file__).resolve().parent.parent
MODES: dict[str, tuple[Callable[[Path], Path], Callable, float]] = {
    # mode: (make the input once, one try, the latest seeded signal time in s)
    "live": (make_stream, live_try, 4.5),
    "library": (make_library, library_try, 25.0),
}
