"""Fuzz the CLI with damaged copies of the sample clip: it must never crash, hang or half-write.

Run from the repository root::

    python -m benchmarks.fuzz_inputs [--seconds 120] [--seed 0] [--video big_bunny_5s_25fps.mp4]
                                     [--model DIR] [--keep DIR]

Each try takes the clip (as it is, moov atom last, or remuxed with ``-movflags +faststart`` so
that a truncated copy still has its index), damages it with one seeded random mutation
(truncation, bit flips, a zeroed or random-filled range, a dropped or duplicated range) and runs
``test_llm_caption.py`` on it with the tiny checkpoint. Every outcome must be one of:

- exit 0 or 3 with a valid ``result.json`` (what could be decoded was captioned; 3: a batch failed);
- exit 2 with no ``result.json`` and one ``error: ...`` line on stderr;

never a traceback, another exit code, or a run that outlives ``--run-timeout`` (a hang). Tries
go on until ``--seconds`` have passed (or ``--tries`` were made); the report counts outcomes per
mutation kind and lists every failure with the seed that reproduces it: tries use seeds S, S+1,
... from ``--seed S``, so ``--seed S --tries 1`` replays the try with seed S. Exit status: 0 when every try passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
        return {0: "captioned", 2: "rejected", 3: "incomplete"}.get(self.returncode, f"exit {self.returncode}")


def faststart_copy(video: Path, folder: Path) -> Path | None:
    """The clip remuxed with its index first (None when ffmpeg is missing or fails)."""
    target = folder / f"faststart{video.suffix}"
    done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-c", "copy",
                           "-movflags", "+faststart", str(target)], capture_output=True)
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
        buffer[start:start + length] = bytes(length)
    elif mutation == "random_range":
        buffer[start:start + length] = rng.randbytes(length)
    elif mutation == "drop_range":
        del buffer[start:start + length]
    elif mutation == "duplicate_range":
        buffer[start:start] = buffer[start:start + length]
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    return bytes(buffer), mutation, f"{length} bytes at {start}"


def check_run(video: Path, workdir: Path, model: Path, run_timeout: float) -> tuple[int | None, float, str | None, str]:
    """Run the CLI on ``video`` in ``workdir``; (exit code, seconds, problem or None, stderr tail)."""
    result = workdir / "result.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, str(CLI), str(video), "--model", str(model), "--device", "cpu",
               "--max-new-tokens", "4", "--output", str(result)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=run_timeout)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        return None, time.perf_counter() - started, f"no exit within {run_timeout:g} s", stderr[-2000:]
    seconds = time.perf_counter() - started
    stderr = done.stderr
    problem = None
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback" in stderr:
        problem = "traceback on stderr"
    elif done.returncode not in (0, 2, 3):
        problem = f"exit code {done.returncode}"
    elif done.returncode == 2:
        if result.exists():
            problem = "exit 2 but result.json was written"
        elif len(lines) != 1 or not lines[0].startswith("error: "):
            problem = f"exit 2 without exactly one 'error:' line ({len(lines)} lines)"
    else:
        try:
            document = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problem = f"exit {done.returncode} without a valid result.json ({error})"
        else:
            problem = _result_problem(document, done.returncode)
    return done.returncode, seconds, problem, stderr[-2000:]


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


def fuzz(seconds: float, seed: int, video: Path, model: Path, run_timeout: float, tries: int | None = None,
         keep: Path | None = None, log=print) -> list[Outcome]:
    """Mutate and run until ``seconds`` pass (or ``tries`` were made); every try's outcome."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory(prefix="fuzz_inputs_") as temp:
        workdir = Path(temp)
        layouts = {"as-is": video.read_bytes()}
        fast = faststart_copy(video, workdir)
        if fast is not None:
            layouts["faststart"] = fast.read_bytes()
            fast.unlink()
        attempt = 0
        while (tries is None or attempt < tries) and (tries is not None or time.monotonic() < deadline):
            try_seed = seed + attempt
            rng = random.Random(try_seed)
            layout = rng.choice(sorted(layouts))
            data, mutation, detail = mutate(layouts[layout], rng)
            damaged = workdir / f"damaged{video.suffix}"
            damaged.write_bytes(data)
            returncode, took, problem, stderr = check_run(damaged, workdir, model, run_timeout)
            outcome = Outcome(try_seed, layout, mutation, detail, returncode, took, problem,
                              stderr if problem else "")
            outcomes.append(outcome)
            said = f": {stderr.strip().splitlines()[-1]}" if returncode == 2 and stderr.strip() else ""
            log(f"[{attempt + 1}] seed {try_seed} {layout} {mutation} ({detail}): {outcome.label} "
                f"in {took:.1f} s{said}{'  PROBLEM: ' + problem if problem else ''}")
            if problem and keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(damaged, keep / f"seed{try_seed}{video.suffix}")
            attempt += 1
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    """Counts per mutation and outcome, then every problem."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        table[outcome.mutation][outcome.label] += 1
    labels = sorted({o.label for o in outcomes})
    lines = [f"{len(outcomes)} tries, {sum(o.problem is not None for o in outcomes)} problems",
             f"{'mutation':<16}" + "".join(f"{label:>12}" for label in labels)]
    for mutation in sorted(table):
        lines.append(f"{mutation:<16}" + "".join(f"{table[mutation][label]:>12}" for label in labels))
    total = collections.Counter(o.label for o in outcomes)
    lines.append(f"{'all':<16}" + "".join(f"{total[label]:>12}" for label in labels))
    for outcome in outcomes:
        if outcome.problem:
            lines.append(f"PROBLEM seed {outcome.seed} ({outcome.layout}, {outcome.mutation}, {outcome.detail}): "
                         f"{outcome.problem}\n{outcome.stderr_tail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="time to keep trying (default: %(default)s)")
    parser.add_argument("--tries", type=int, help="stop after this many tries instead")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--video", type=Path, default=SAMPLE, help="clip to damage (default: the sample clip)")
    parser.add_argument("--model", type=Path, default=TINY_MODEL, help="checkpoint (default: the tiny one)")
    parser.add_argument("--run-timeout", type=float, default=180.0,
                        help="seconds one CLI run may take before it counts as a hang (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="copy every damaged file that caused a problem here")
    args = parser.parse_args(argv)
    outcomes = fuzz(args.seconds, args.seed, args.video, args.model, args.run_timeout, tries=args.tries,
                    keep=args.keep)
    print(report(outcomes))
    return 1 if any(o.problem for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
