"""Dynamic batching: batches described per second with ``max_threads`` 4 vs 1 (multithreading on / off).

Run from the repository root::

    python -m benchmarks.bench_dynamic_batching [--duration 32] [--batch-size 4] [--new-tokens 256]
                                                [--threads 4] [--repeats 3]

Why: with multithreading on, the scheduler lets up to ``max_threads`` batches wait and describes
the waiting ones in one batched model call (one model instance, no thread per batch); that
should describe batches at least twice as fast as one at a time (goal: x2 on CPU with the tiny
checkpoint). Each run is the whole BMF graph on a generated clip (``--duration`` s, 320x240,
25 fps, so >= 16 frames are sampled at 1 fps). Throughput is batches / seconds from the start of
the run to the end of the last ``describe_batch`` call (the summary and title passes that follow
are the same text prompts in both modes, so they are reported but left out of the ratio). The
runs alternate; best of ``--repeats`` per mode, since other work on a shared machine only adds time.
Last, the recorded batches are described again on the model alone, one per call and then
``--threads`` per call: the ceiling for the pipeline's ratio, without decoding beside it. The
last line gives the share of that gain the pipeline keeps (goal: at least 85%).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, TINY_MODEL, machine, make_clip, quiet_bmf, recording_model_calls, stopwatch
from videocaption.backends import load_model
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions


def one_run(clip: Path, options: CaptionOptions) -> dict[str, float]:
    """Batches, describe-phase seconds, whole-run seconds, and the batches in each model call."""
    with recording_model_calls() as log, quiet_bmf():
        start = time.perf_counter()  # the same clock as the recorded calls
        result = run_caption_graph(clip, options)
        whole = time.perf_counter() - start
    describes = sorted(log.of("describe_batch"), key=lambda c: c.start)
    return {
        "batches": len(result.batches),
        "frames": result.frames_analysed,
        "describe_s": max(c.end for c in describes) - start,
        "whole_s": whole,
        "groups": [len(c.args[0]) for c in describes],
        "requests": [request for c in describes for request in c.args[0]],
    }


def model_alone(model, requests: list, group: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """Best seconds to describe ``requests`` one per call, and ``group`` per call, on the model alone."""

    def timed(size: int) -> float:
        with stopwatch() as elapsed:
            for i in range(0, len(requests), size):
                model.describe_batch(requests[i : i + size], max_new_tokens=new_tokens)
        return elapsed()

    return min(timed(1) for _ in range(repeats)), min(timed(group) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=32.0, help="seconds of generated video (1 frame sampled a second)"
    )
    parser.add_argument("--model", default=str(TINY_MODEL.relative_to(ROOT)))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=CaptionOptions.max_new_tokens,
        help="answer length limit (default: the pipeline's, %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=4, help="max_threads with multithreading on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llm-caption-bench")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    clip = make_clip(args.workdir / f"batching_{args.duration:g}s_320x240.mp4", duration=args.duration)
    base = CaptionOptions(
        model=args.model,
        device="cpu",
        batch_size=args.batch_size,
        max_new_tokens=args.new_tokens,
        result_path=str(args.workdir / "batching_result.json"),
    )
    modes = {
        "max_threads 1 (off)": base,
        f"max_threads {args.threads} (on)": base.replace(multithreading=True, max_threads=args.threads),
    }
    print(f"machine: {machine()}")
    print(
        f"clip {args.duration:g} s 320x240 25 fps, batch_size {args.batch_size}, max_new_tokens {args.new_tokens}, "
        f"model {args.model}; best of {args.repeats}"
    )

    load_model(base)
    for options in modes.values():  # burn-in: every batched shape once
        with quiet_bmf():
            run_caption_graph(clip, options)
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, options in modes.items():
            runs[name].append(one_run(clip, options))

    print(
        f"{'mode':<22} {'frames':>6} {'batches':>7} {'describe s':>10} {'batches/s':>9} {'whole run s':>11}  model calls (batches each)"
    )
    rates = {}
    for name, results in runs.items():
        best = min(results, key=lambda r: r["describe_s"])
        rates[name] = best["batches"] / best["describe_s"]
        print(
            f"{name:<22} {best['frames']:>6} {best['batches']:>7} {best['describe_s']:>10.2f} {rates[name]:>9.2f} "
            f"{min(r['whole_s'] for r in results):>11.2f}  {best['groups']}"
        )
    off, on = rates.values()
    print(
        f"max_threads {args.threads} / 1: x{on / off:.2f} batches/s (goal >= x2: {'met' if on / off >= 2 else 'missed'})"
    )
    requests = runs[next(iter(modes))][0]["requests"]
    one, grouped = model_alone(load_model(base), requests, args.threads, args.new_tokens, args.repeats)
    alone = one / grouped
    print(
        f"the model alone, the same {len(requests)} batches one per call vs {args.threads} per call: {one:.2f} s vs "
        f"{grouped:.2f} s, x{alone:.2f} (the most dynamic batching can give here)"
    )
    kept = (on / off - 1) / (alone - 1) if alone > 1 else float("nan")
    print(
        f"the pipeline keeps {kept:.0%} of the gain batching gives the model alone "
        f"(goal >= 85%: {'met' if kept >= 0.85 else 'missed'})"
    )


if __name__ == "__main__":
    main()
