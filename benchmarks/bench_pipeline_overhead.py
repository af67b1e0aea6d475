"""What the pipeline costs on top of the model: a whole BMF run vs the same model calls alone.

Run from the repository root::

    python -m benchmarks.bench_pipeline_overhead [--video big_bunny_5s_25fps.mp4] [--new-tokens 32]
                                                 [--batch-size 4] [--repeats 3]
    python -m benchmarks.bench_pipeline_overhead --full-size    # the real architecture (minutes)

Why: the graph (decode, select, frame conversion, batching, the scheduler's worker thread,
summary and title logic, result files) should add little to the model's own time (goal: under 5%).
Each repeat runs ``run_caption_graph`` on the clip with the tiny reference checkpoint, recording
every ``describe_batch`` / ``complete_batch`` call the pipeline makes (the exact frames, prompts
and token budgets), then makes those same calls again directly on the same loaded model, one
after another. Overhead = (whole run - model calls alone) / model calls alone. The model is
loaded (and the graph run once) before timing, as a long-lived process would have it.
On a shared machine other work only ever adds time, so the ratio uses the best (smallest) of
the repeats on each side; CPU time (this process's threads) is the median.

The tiny checkpoint needs a fraction of a second for the whole clip, so that ratio mostly shows
what decoding costs beside a model that does almost nothing. ``--full-size`` runs the real
deepseek-vl2-tiny architecture instead (random weights, bfloat16, built as
:mod:`benchmarks.bench_full_size` builds it; one repeat, as each takes minutes on a CPU): the
ratio a user of the real model gets. Random weights never pick ``eos`` on purpose, so every
answer has ``--new-tokens`` tokens and the replay does the same work as the run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ROOT,
    SAMPLE_CLIP,
    TINY_MODEL,
    cpu_seconds,
    machine,
    quiet_bmf,
    recording_model_calls,
    replay,
    stopwatch,
)
from videocaption import backends
from videocaption.backends import load_model
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions


def model_thread_switches() -> int:
    """Voluntary context switches of the model thread so far (its OpenMP team sleeping and waking
    shows here first; see docs/performance.md). 0 where /proc is missing."""
    from videocaption.deepseek_vl2.threads import model_thread_native_id

    try:
        status = Path(f"/proc/self/task/{model_thread_native_id()}/status").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def one_repeat(video: Path, options: CaptionOptions) -> dict[str, float]:
    """Whole run and the same calls replayed alone: wall and CPU seconds, model-thread context switches."""
    with recording_model_calls() as log:
        cpu, switches = cpu_seconds(), model_thread_switches()
        with stopwatch() as elapsed, quiet_bmf():
            started = time.perf_counter()  # the clock of the recorded calls
            result = run_caption_graph(video, options)
        whole, whole_cpu = elapsed(), cpu_seconds() - cpu
        whole_switches = model_thread_switches() - switches
    cpu, switches = cpu_seconds(), model_thread_switches()
    alone = replay(load_model(options), log.calls)
    alone_cpu, alone_switches = cpu_seconds() - cpu, model_thread_switches() - switches
    calls = sorted(log.calls, key=lambda c: c.start)
    return {
        "before_first_call_s": calls[0].start - started,
        "between_calls_s": sum(max(0.0, b.start - a.end) for a, b in zip(calls, calls[1:])),
        "after_last_call_s": started + whole - calls[-1].end,
        "whole_s": whole,
        "model_in_run_s": log.seconds(),
        "model_alone_s": alone,
        "calls": len(log.calls),
        "batches": len(result.batches),
        "overhead": (whole - alone) / alone,
        "cpu_overhead": (whole_cpu - alone_cpu) / alone_cpu,
        "switches_per_s_in_run": whole_switches / log.seconds(),
        "switches_per_s_alone": alone_switches / alone,
    }


def preload_full_size(options: CaptionOptions) -> None:
    """Make ``load_model(options)`` (and so the pipeline) use the full-size random-weight network.

    The network has no checkpoint on disk to load it from, so it goes straight into the
    process's model cache, where the BMF module in this process finds it.
    """
    from benchmarks.bench_full_size import build_runtime

    model = build_runtime(options.device, options.dtype, weights=True)
    model.processor.eos_id = -1  # random weights: every answer is max_new_tokens long
    backends._cache[backends._cache_key(options)] = model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=SAMPLE_CLIP)
    parser.add_argument("--model", default=str(TINY_MODEL.relative_to(ROOT)))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, help="default: 5, or 1 with --full-size")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="the real deepseek-vl2-tiny architecture (random weights, bfloat16) instead of --model",
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.full_size else 5)

    workdir = Path(tempfile.mkdtemp(prefix="llm-caption-bench-"))
    model_name = "deepseek-vl2-tiny architecture (random weights, bfloat16)" if args.full_size else args.model
    options = CaptionOptions(
        model=model_name if args.full_size else args.model,
        device="cpu",
        dtype="bfloat16" if args.full_size else "auto",
        max_new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        result_path=str(workdir / "result.json"),
    )
    print(f"machine: {machine()}")
    print(
        f"video {args.video.name}, batch_size {args.batch_size}, fps {options.fps:g}, "
        f"max_new_tokens {args.new_tokens}, model {model_name}; {repeats} repeat(s) after a burn-in"
    )

    if args.full_size:
        preload_full_size(options)
        # burn-in: one short model call (a whole run would take minutes); BMF's first graph
        # start then counts against the pipeline, which only makes the figure pessimistic
        load_model(options).complete_batch(["Hello."], max_new_tokens=2)
    else:
        load_model(options)
        with quiet_bmf():
            run_caption_graph(args.video, options)  # burn-in: BMF's first graph, allocator, caches
    runs = [one_repeat(args.video, options) for _ in range(repeats)]

    print(
        f"{'repeat':>6} {'calls':>5} {'batches':>7} {'whole run s':>11} {'model in run s':>14} "
        f"{'model alone s':>13} {'wall overhead':>13} {'CPU overhead':>12}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:>6} {r['calls']:>5} {r['batches']:>7} {r['whole_s']:>11.3f} {r['model_in_run_s']:>14.3f} "
            f"{r['model_alone_s']:>13.3f} {r['overhead'] * 100:>12.1f}% {r['cpu_overhead'] * 100:>11.1f}%"
        )
    whole = min(r["whole_s"] for r in runs)
    alone = min(r["model_alone_s"] for r in runs)
    overhead = (whole - alone) / alone
    cpu_overhead = statistics.median(r["cpu_overhead"] for r in runs)
    print(
        "where the added time goes (median): before the first model call (graph start, decoding the first "
        f"batch's frames) {statistics.median(r['before_first_call_s'] for r in runs):.3f} s, between calls "
        f"{statistics.median(r['between_calls_s'] for r in runs):.3f} s, after the last call (result files, graph "
        f"shutdown) {statistics.median(r['after_last_call_s'] for r in runs):.3f} s; model calls slowed by decoding "
        f"running beside them {statistics.median(r['model_in_run_s'] - r['model_alone_s'] for r in runs):+.3f} s"
    )
    outside = statistics.median(r["whole_s"] - r["model_in_run_s"] for r in runs)
    in_run = statistics.median(r["model_in_run_s"] for r in runs)
    print(
        f"time outside the model calls (median; what load on the machine hardly moves): {outside:.3f} s = "
        f"{outside / in_run * 100:.2f}% of the {in_run:.3f} s of model calls in the run"
    )
    print(
        "model thread's voluntary context switches per second of model calls (median): in the run "
        f"{statistics.median(r['switches_per_s_in_run'] for r in runs):.0f}, alone "
        f"{statistics.median(r['switches_per_s_alone'] for r in runs):.0f}"
    )
    print(
        f"best of {len(runs)}: whole run {whole:.3f} s, model calls alone {alone:.3f} s, pipeline adds "
        f"{whole - alone:.3f} s = {overhead * 100:+.1f}% of model time (median CPU time: {cpu_overhead * 100:+.1f}%); "
        f"goal < 5%: {'met' if overhead < 0.05 else 'missed'}"
    )


if __name__ == "__main__":
    main()
