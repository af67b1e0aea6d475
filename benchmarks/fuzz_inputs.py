"""Fuzz the CLI: damaged inputs, odd option values and output paths, signals at random times.

Run from the repository root::

    python -m benchmarks.fuzz_inputs [--mode inputs|options|paths|signals|library|live]
                                     [--seconds 120 | --tries N]
                                     [--seed 0] [--video big_bunny_5s_25fps.mp4] [--model DIR] [--keep DIR]

``inputs`` (the default): each try takes the clip (as it is, moov atom last, or remuxed with
``-movflags +faststart`` so that a truncated copy still has its index), damages it with one
seeded random mutation (truncation, bit flips, a zeroed or random-filled range, a dropped or
duplicated range) and runs ``test_llm_caption.py`` on it with the tiny checkpoint.
``options``: the clip as it is, with one to three flags set to seeded odd values (zero, negative,
NaN, huge, not a number, unknown flags, contradicting combinations). ``paths``: ``--output``,
``--srt`` and ``--vtt`` set to seeded odd paths (a directory, a file as a parent, the input
video itself, a name too long, dashes, spaces, Unicode, one path twice). Every outcome must be
one of:

- exit 0 or 3 with a valid ``result.json`` (what could be decoded was captioned; 3: a batch failed);
- exit 2 with no result or subtitle file and one ``error: ...`` line on stderr;

never a traceback, another exit code, or a run that outlives ``--run-timeout`` (a hang).

``signals``: one undisturbed run first (the reference), then each try starts the same run,
sends SIGINT, SIGTERM or SIGKILL at a seeded time within the reference run's duration, checks
how it ended (130, 143 or killed, at most one line on stderr, no result or subtitle file, a
checkpoint that parses) and runs it again with ``--resume``: the result, SRT and VTT files must
equal the reference's, timing fields aside.

``library`` and ``live`` (:mod:`benchmarks.fuzz_runs`): a library run (three 2 s clips, one Ray
worker) or a live run (a 6 s MPEG-TS stream under ``--live``) against a fake OpenAI server on
loopback with a seeded fault (none, 500s, slow answers, down for good), stopped at a seeded time
by a seeded SIGINT, SIGTERM or SIGKILL (or not), then rerun against a healthy server: no
traceback, the documented exit codes, nothing lost, nothing done twice, the manifest, its journal
and the JSONL valid. These make 3 tries by default (a library try takes about a minute).

Tries go on until ``--seconds`` have passed (or ``--tries`` were made); the report counts
outcomes per kind and lists every failure with the seed that reproduces it: tries use seeds S,
S+1, ... from ``--seed S``, so ``--seed S --tries 1`` replays the try with seed S. Exit status: 0
when every try passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from videocaption.result import untimed

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "test_llm_caption.py"
SAMPLE = ROOT / "big_bunny_5s_25fps.mp4"
TINY_MODEL = ROOT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"
MUTATIONS = ("truncate", "flip_bits", "zero_range", "random_range", "drop_range", "duplicate_range")


@dataclass
class Outcome:
    seed: int
    layout: str
    mutation: str
    detail: str
    returncode: int | None  # None: killed after the run timeout
    seconds: float
    problem: str | None  # None when the outcome is acceptable
    stderr_tail: str = ""

    @property
    def label(self) -> str:
        if self.returncode is None:
            return "hang"
        return {0: "captioned", 2: "rejected", 3: "incomplete", 130: "SIGINT", 143: "SIGTERM", -9: "SIGKILL"}.get(
            self.returncode, f"exit {self.returncode}"
        )


def faststart_copy(video: Path, folder: Path) -> Path | None:
    """The clip remuxed with its index first (None when ffmpeg is missing or fails)."""
    target = folder / f"faststart{video.suffix}"
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(video), "-c", "copy", "-movflags", "+faststart", str(target)],
        capture_output=True,
    )
    return target if done.returncode == 0 else None


def mutate(data: bytes, rng: random.Random, mutation: str | None = None) -> tuple[bytes, str, str]:
    """One damaged copy of ``data``: (bytes, mutation name, what was done)."""
    mutation = mutation or rng.choice(MUTATIONS)
    size = len(data)
    if mutation == "truncate":
        # Short prefixes are the interesting ones for headers; anywhere else for the payload.
        cut = rng.choice([rng.randrange(1, min(size, 4096)), rng.randrange(1, size)])
        return data[:cut], mutation, f"kept {cut} of {size} bytes"
    buffer = bytearray(data)
    if mutation == "flip_bits":
        count = rng.choice([1, 8, 64, 512])
        for _ in range(count):
            position = rng.randrange(size)
            buffer[position] ^= 1 << rng.randrange(8)
        return bytes(buffer), mutation, f"{count} bits flipped"
    start = rng.randrange(size)
    length = min(size - start, rng.choice([16, 256, 4096, 65536]))
    if mutation == "zero_range":
        buffer[start : start + length] = bytes(length)
    elif mutation == "random_range":
        buffer[start : start + length] = rng.randbytes(length)
    elif mutation == "drop_range":
        del buffer[start : start + length]
    elif mutation == "duplicate_range":
        buffer[start:start] = buffer[start : start + length]
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    return bytes(buffer), mutation, f"{length} bytes at {start}"


def check_run(
    video: Path, workdir: Path, model: Path, run_timeout: float, extra: tuple[str, ...] = ()
) -> tuple[int | None, float, str | None, str]:
    """Run the CLI on ``video`` in ``workdir``; (exit code, seconds, problem or None, stderr tail).

    ``extra`` flags come last (a later ``--output`` replaces ``workdir/result.json``).
    """
    result = workdir / "result.json"
    result.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(CLI),
        str(video),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--output",
        str(result),
        *extra,
    ]
    outputs = output_paths(command, workdir)
    before = {path: _state(path) for path in outputs}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=run_timeout)
    except subprocess.TimeoutExpired as expired:
        stderr = (
            expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        )
        return None, time.perf_counter() - started, f"no exit within {run_timeout:g} s", stderr[-2000:]
    seconds = time.perf_counter() - started
    changed = [path for path in outputs if _state(path) != before[path]]
    return done.returncode, seconds, judge(done.returncode, done.stderr, outputs, changed), done.stderr[-2000:]


def judge(returncode: int, stderr: str, outputs: list[Path], changed: list[Path]) -> str | None:
    """What is wrong with how a run ended, or None (see the module docstring).

    Args:
        outputs: the result file, then the subtitle files the command asked for.
        changed: those of ``outputs`` that the run created, replaced or removed.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback" in stderr:
        return "traceback on stderr"
    if returncode not in (0, 2, 3):
        return f"exit code {returncode}"
    if returncode == 2:
        if changed:
            return f"exit 2 but {', '.join(map(str, changed))} changed"
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return f"exit 2 without exactly one 'error:' line ({len(lines)} lines)"
        return None
    if sorted(changed) != sorted(set(outputs)):
        return f"exit {returncode} but only {', '.join(map(str, changed)) or 'nothing'} of the outputs was written"
    try:
        document = json.loads(outputs[0].read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"exit {returncode} without a valid result file ({error})"
    return _result_problem(document, returncode)


def output_paths(command: list[str], workdir: Path) -> list[Path]:
    """The result, SRT and VTT paths a CLI command line names (the last ``--output`` wins)."""
    pairs = list(zip(command, command[1:] + [""]))
    result = Path("result.json")
    for flag, value in pairs:
        if flag == "--output":
            result = Path(value)
    subtitles = [
        Path(value) if value and not value.startswith("--") else result.with_suffix("." + flag[2:])
        for flag, value in pairs
        if flag in ("--srt", "--vtt")
    ]
    return [workdir / path for path in (result, *subtitles)]


def _state(path: Path) -> tuple[int, int] | None:
    """A file's size and modification time (None when it is absent or not a file)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if path.is_file() else None


def _result_problem(document: dict, returncode: int) -> str | None:
    batches = document.get("batches")
    if not isinstance(batches, list) or not batches:
        return "result.json has no batches"
    if document.get("frames_analysed") != sum(b.get("frames", 0) for b in batches):
        return "frames_analysed does not add up"
    times = [(b["start_time"], b["end_time"]) for b in batches]
    if any(start > end for start, end in times) or any(a[1] >= b[0] for a, b in zip(times, times[1:])):
        return f"batch times out of order: {times}"
    failed = any("error" in b for b in batches)
    if failed != (returncode == 3):
        return f"exit {returncode} but {'some' if failed else 'no'} batch has an error field"
    return None


def attempts(seconds: float, seed: int, tries: int | None) -> Iterator[tuple[int, int, random.Random]]:
    """``(attempt, seed, rng)`` for each try: ``tries`` of them, or as many as fit in ``seconds``."""
    deadline = time.monotonic() + seconds
    attempt = 0
    while (tries is None or attempt < tries) and (tries is not None or time.monotonic() < deadline):
        yield attempt, seed + attempt, random.Random(seed + attempt)
        attempt += 1


def fuzz(
    seconds: float,
    seed: int,
    video: Path,
    model: Path,
    run_timeout: float,
    tries: int | None = None,
    keep: Path | None = None,
    log=print,
) -> list[Outcome]:
    """Mutate and run until ``seconds`` pass (or ``tries`` were made); every try's outcome."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="fuzz_inputs_") as temp:
        workdir = Path(temp)
        layouts = {"as-is": video.read_bytes()}
        fast = faststart_copy(video, workdir)
        if fast is not None:
            layouts["faststart"] = fast.read_bytes()
            fast.unlink()
        for attempt, try_seed, rng in attempts(seconds, seed, tries):
            layout = rng.choice(sorted(layouts))
            data, mutation, detail = mutate(layouts[layout], rng)
            damaged = workdir / f"damaged{video.suffix}"
            damaged.write_bytes(data)
            returncode, took, problem, stderr = check_run(damaged, workdir, model, run_timeout)
            outcome = Outcome(try_seed, layout, mutation, detail, returncode, took, problem, stderr if problem else "")
            outcomes.append(outcome)
            said = f": {stderr.strip().splitlines()[-1]}" if returncode == 2 and stderr.strip() else ""
            log(
                f"[{attempt + 1}] seed {try_seed} {layout} {mutation} ({detail}): {outcome.label} "
                f"in {took:.1f} s{said}{'  PROBLEM: ' + problem if problem else ''}"
            )
            if problem and keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(damaged, keep / f"seed{try_seed}{video.suffix}")
    return outcomes


# Flag -> odd values to try (each try sets one to three of them). Answer lengths and batch
# sizes stay small enough for a run to take seconds.
OPTION_VALUES: dict[str, list[str]] = {
    "--batch-size": ["0", "-1", "1", "3", "9", "1000", "x", "1.5", "", "nan"],
    "--fps": ["0", "-1", "nan", "inf", "1e-9", "0.25", "2", "1e9", "x", ""],
    "--max-threads": ["0", "-3", "1", "2", "x"],
    "--max-new-tokens": ["0", "-1", "1", "x", "3"],
    "--device": ["cpu", "auto", "tpu", "cuda:x", ""],
    "--dtype": ["float32", "int8", ""],
    "--backend": ["openai", "nope", "deepseek_vl2"],
    "--prompt": ["", " ", "Say -- and --> and \n\n only.", "x" * 20000],
    "--request-timeout": ["0", "-1", "nan", "5"],
    "--max-retries": ["-1", "x", "0"],
}
SWITCHES = ["--multithreading", "--no-time-aware", "--resume", "--srt", "--vtt", "--colour", "-x", "--batch_size=4"]


def random_flags(rng: random.Random) -> list[str]:
    """One to three odd option values, maybe with a switch or an unknown flag."""
    flags: list[str] = []
    for flag in rng.sample(sorted(OPTION_VALUES), rng.randint(1, 3)):
        flags += [flag, rng.choice(OPTION_VALUES[flag])]
    if rng.random() < 0.5:
        flags.append(rng.choice(SWITCHES))
    return flags


def random_output_flags(rng: random.Random, workdir: Path, video: Path) -> list[str]:
    """``--output``, ``--srt`` and ``--vtt`` at odd paths (made ready in ``workdir``)."""
    (workdir / "a-directory").mkdir(exist_ok=True)
    (workdir / "a-file").write_text("")
    paths = [
        "a-directory",
        "a-file/r.json",
        "new/nested/dirs/r.json",
        "./-dash.json",
        "-dash.json",
        "sp ace/ünï cødé.json",
        "x" * 300 + ".json",
        "/proc/r.json",
        video.name,
        "r.json",
        "r.json.partial",
        "same.txt",
        "same.txt",
    ]
    flags: list[str] = []
    for flag in rng.sample(["--output", "--srt", "--vtt"], rng.randint(1, 3)):
        flags += [flag, rng.choice(paths)] if flag == "--output" or rng.random() < 0.8 else [flag]
    return flags


def fuzz_flags(
    seconds: float,
    seed: int,
    video: Path,
    model: Path,
    run_timeout: float,
    *,
    mode: str,
    tries: int | None = None,
    log=print,
) -> list[Outcome]:
    """``options`` or ``paths`` mode: the clip as it is, with seeded odd flags."""
    outcomes: list[Outcome] = []
    for attempt, try_seed, rng in attempts(seconds, seed, tries):
        with tempfile.TemporaryDirectory(prefix="fuzz_flags_") as temp:
            workdir = Path(temp)
            clip = workdir / f"clip{video.suffix}"
            shutil.copy(video, clip)
            flags = random_flags(rng) if mode == "options" else random_output_flags(rng, workdir, clip)
            returncode, took, problem, stderr = check_run(clip, workdir, model, run_timeout, tuple(flags))
            if problem is None and clip.read_bytes() != video.read_bytes():
                problem = "the input video was changed"
        detail = " ".join(flag if len(flag) < 40 else flag[:12] + f"...({len(flag)} chars)" for flag in flags)
        outcome = Outcome(try_seed, "as-is", mode, detail, returncode, took, problem, stderr if problem else "")
        outcomes.append(outcome)
        said = f": {stderr.strip().splitlines()[-1]}" if returncode == 2 and stderr.strip() else ""
        log(
            f"[{attempt + 1}] seed {try_seed} {detail}: {outcome.label} in {took:.1f} s{said}"
            f"{'  PROBLEM: ' + problem if problem else ''}"
        )
    return outcomes


STOP_SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143), "SIGKILL": (signal.SIGKILL, -9)}


def _outputs(folder: Path) -> dict[str, object]:
    """The result (timing fields aside) and subtitle files of a run in ``folder``."""
    result = json.loads((folder / "r.json").read_text(encoding="utf-8"))
    return {
        "r.json": untimed(result),
        "r.srt": (folder / "r.srt").read_text(encoding="utf-8"),
        "r.vtt": (folder / "r.vtt").read_text(encoding="utf-8"),
    }


def fuzz_signals(
    seconds: float, seed: int, video: Path, model: Path, run_timeout: float, *, tries: int | None = None, log=print
) -> list[Outcome]:
    """``signals`` mode: stop a run at a seeded time with a seeded signal, resume, compare."""
    with tempfile.TemporaryDirectory(prefix="fuzz_signals_") as temp:
        root = Path(temp)
        command = [
            sys.executable,
            str(CLI),
            str(video),
            "--model",
            str(model),
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "--batch-size",
            "1",
            "--output",
            "r.json",
            "--srt",
            "--vtt",
        ]
        (root / "reference").mkdir()
        started = time.perf_counter()
        subprocess.run(command, cwd=root / "reference", check=True, capture_output=True, timeout=run_timeout)
        reference_seconds = time.perf_counter() - started
        reference = _outputs(root / "reference")
        log(f"reference run: {reference_seconds:.1f} s, {reference['r.json']['frames_analysed']} frames")
        outcomes: list[Outcome] = []
        for attempt, try_seed, rng in attempts(seconds, seed, tries):
            name = rng.choice(sorted(STOP_SIGNALS))
            at = rng.uniform(0.0, reference_seconds * 1.05)
            workdir = root / f"try{attempt}"
            workdir.mkdir()
            outcome = _signal_try(command, workdir, name, at, reference, run_timeout, try_seed)
            outcomes.append(outcome)
            log(
                f"[{attempt + 1}] seed {try_seed} {outcome.detail}: {outcome.label}, resumed in {outcome.seconds:.1f} s"
                f"{'  PROBLEM: ' + outcome.problem if outcome.problem else ''}"
            )
            shutil.rmtree(workdir)
    return outcomes


def _signal_try(
    command: list[str], workdir: Path, name: str, at: float, reference: dict, run_timeout: float, try_seed: int
) -> Outcome:
    signum, expected = STOP_SIGNALS[name]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process.wait(timeout=at)
        finished_first = True
    except subprocess.TimeoutExpired:
        finished_first = False
        process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=run_timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        return Outcome(
            try_seed, "signal", name, f"{name} at {at:.2f} s", None, 0.0, "no exit after the signal", stderr[-2000:]
        )
    returncode = process.returncode
    detail = f"{name} at {at:.2f} s" + (" (after the run ended)" if finished_first else "")
    problem = None
    lines = [line for line in stderr.splitlines() if line.strip()]
    files = sorted(p.name for p in workdir.iterdir())
    if "Traceback" in stderr:
        problem = "traceback on stderr"
    elif returncode == 0:
        if files != ["r.json", "r.srt", "r.vtt"]:
            problem = f"exit 0 with files {files}"
    elif returncode != expected:
        problem = f"exit code {returncode} after {name}"
    elif name != "SIGKILL" and (len(lines) > 1 or (lines and not lines[0].startswith("interrupted"))):
        problem = f"{len(lines)} lines on stderr after {name}"
    elif [f for f in files if not f.startswith(".r.json.partial.")] not in ([], ["r.json.partial"]):
        problem = f"files left after {name}: {files}"  # (SIGKILL may leave a checkpoint's temporary file)
    elif name != "SIGKILL" and len(files) > len([f for f in files if not f.startswith(".")]):
        problem = f"temporary files left after {name}: {files}"
    elif "r.json.partial" in files:
        try:
            json.loads((workdir / "r.json.partial").read_text(encoding="utf-8"))
        except ValueError:
            problem = "the checkpoint does not parse"
    if problem is None:
        started = time.perf_counter()
        resumed = subprocess.run(
            command + ["--resume"], cwd=workdir, capture_output=True, text=True, timeout=run_timeout
        )
        seconds = time.perf_counter() - started
        if resumed.returncode != 0:
            problem, stderr = f"--resume exited {resumed.returncode}", resumed.stderr
        elif _outputs(workdir) != reference:
            problem = "the resumed result differs from the undisturbed run's"
        elif (workdir / "r.json.partial").exists():
            problem = "the checkpoint is left after the resumed run"
    else:
        seconds = 0.0
    return Outcome(
        try_seed,
        "signal",
        name,
        detail,
        returncode,
        seconds if problem is None else 0.0,
        problem,
        stderr[-2000:] if problem else "",
    )


def report(outcomes: list[Outcome]) -> str:
    """Counts per mutation and outcome, then every problem."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        table[outcome.mutation][outcome.label] += 1
    labels = sorted({o.label for o in outcomes})
    lines = [
        f"{len(outcomes)} tries, {sum(o.problem is not None for o in outcomes)} problems",
        f"{'mutation':<16}" + "".join(f"{label:>12}" for label in labels),
    ]
    for mutation in sorted(table):
        lines.append(f"{mutation:<16}" + "".join(f"{table[mutation][label]:>12}" for label in labels))
    total = collections.Counter(o.label for o in outcomes)
    lines.append(f"{'all':<16}" + "".join(f"{total[label]:>12}" for label in labels))
    for outcome in outcomes:
        if outcome.problem:
            lines.append(
                f"PROBLEM seed {outcome.seed} ({outcome.layout}, {outcome.mutation}, {outcome.detail}): "
                f"{outcome.problem}\n{outcome.stderr_tail}"
            )
    return "\n".join(lines)


def fuzz_runs(
    mode: str, seconds: float, seed: int, run_timeout: float, *, tries: int | None = None, log=print
) -> list[Outcome]:
    """``library`` or ``live`` mode: seeded faults and kills, then a rerun (:mod:`benchmarks.fuzz_runs`)."""
    from benchmarks import fuzz_runs

    make_input, one_try, latest = fuzz_runs.MODES[mode]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix=f"fuzz_{mode}_") as temp:
        root = Path(temp)
        source = make_input(root)
        for attempt, try_seed, rng in attempts(seconds, seed, tries):
            fault, kill, at = rng.choice(fuzz_runs.FAULTS), rng.choice(fuzz_runs.KILLS), rng.uniform(0.5, latest)
            workdir = root / f"try{attempt}"
            workdir.mkdir()
            started = time.perf_counter()
            detail, returncode, problem, stderr = one_try(source, workdir, fault, kill, at, rng, run_timeout)
            took = time.perf_counter() - started
            outcomes.append(
                Outcome(try_seed, mode, fault, detail, returncode, took, problem, stderr[-2000:] if problem else "")
            )
            log(
                f"[{attempt + 1}] seed {try_seed} {detail}: {outcomes[-1].label}, then rerun; {took:.1f} s"
                f"{'  PROBLEM: ' + problem if problem else ''}"
            )
            shutil.rmtree(workdir, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mode",
        choices=("inputs", "options", "paths", "signals", "library", "live"),
        default="inputs",
        help="what to vary (default: %(default)s)",
    )
    parser.add_argument("--seconds", type=float, help="time to keep trying (default: 120; library and live: 3 tries)")
    parser.add_argument("--tries", type=int, help="stop after this many tries instead")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--video", type=Path, default=SAMPLE, help="clip to use (default: the sample clip)")
    parser.add_argument("--model", type=Path, default=TINY_MODEL, help="checkpoint (default: the tiny one)")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=180.0,
        help="seconds one CLI run may take before it counts as a hang (default: %(default)s)",
    )
    parser.add_argument("--keep", type=Path, help="inputs mode: copy every damaged file that caused a problem here")
    args = parser.parse_args(argv)
    if args.mode in ("library", "live"):
        tries = args.tries if args.tries is not None or args.seconds is not None else 3
        outcomes = fuzz_runs(args.mode, args.seconds or 0.0, args.seed, args.run_timeout, tries=tries)
        print(report(outcomes))
        return 1 if any(o.problem for o in outcomes) else 0
    args.seconds = 120.0 if args.seconds is None else args.seconds
    if args.mode == "inputs":
        outcomes = fuzz(
            args.seconds, args.seed, args.video, args.model, args.run_timeout, tries=args.tries, keep=args.keep
        )
    elif args.mode == "signals":
        outcomes = fuzz_signals(args.seconds, args.seed, args.video, args.model, args.run_timeout, tries=args.tries)
    else:
        outcomes = fuzz_flags(
            args.seconds, args.seed, args.video, args.model, args.run_timeout, mode=args.mode, tries=args.tries
        )
    print(report(outcomes))
    return 1 if any(o.problem for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
