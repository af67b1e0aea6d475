"""Peak memory of a whole run on a 60 s vs a 600 s video: should not grow with the video's length.

Run from the repository root::

    python -m benchmarks.bench_memory [--short 60] [--long 600] [--size 320x180] [--rate 10]
                                      [--new-tokens 8] [--max-threads 1] [--report]

Why: frames are converted only when sampled, the scheduler's bounded queue holds the decoder back
(backpressure), and a described batch drops its pictures, so ten times the video should need
about the same memory (goal: peak RSS within 10%). Each clip goes through the whole BMF graph
(``run_caption_graph``) with the tiny reference checkpoint in a fresh Python process, which
reports its own peak resident set size (``ru_maxrss``: model, BMF, decoder and every thread).
The clips are generated once (FFmpeg ``testsrc2``, small so that the 600 s run takes about a
minute); a run's peak is dominated by the process's fixed cost (torch, BMF, the model), so the
difference between the two is the part that could grow with the video.

``--report`` adds a third run, the long clip with the HTML report (``report_path``): its
thumbnails are made from the frames the pipeline holds and kept as small JPEGs, so the report
should cost little memory (goal: peak RSS within 10% of the same run without it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, TINY_MODEL, machine, make_clip, peak_rss_mib, quiet_bmf, report_to_parent, run_child


def child(clip: Path, result_path: Path, new_tokens: int, max_threads: int, model: str, report: bool) -> None:
    """In a fresh process: caption ``clip`` and report peak RSS, frames and seconds to the parent."""
    from videocaption.graph.runner import run_caption_graph
    from videocaption.options import CaptionOptions

    options = CaptionOptions(
        model=model,
        device="cpu",
        max_new_tokens=new_tokens,
        multithreading=max_threads > 1,
        max_threads=max_threads,
        result_path=str(result_path),
        report_path=str(result_path.with_suffix(".html")) if report else None,
    )
    start = time.perf_counter()
    with quiet_bmf():
        result = run_caption_graph(clip, options)
    report_to_parent(
        {
            "peak_rss_mib": peak_rss_mib(),
            "frames": result.frames_analysed,
            "batches": len(result.batches),
            "seconds": time.perf_counter() - start,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=float, default=60.0, help="seconds of the short clip")
    parser.add_argument("--long", type=float, default=600.0, help="seconds of the long clip")
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--rate", type=int, default=10, help="frame rate of the generated clips")
    parser.add_argument("--model", default=str(TINY_MODEL.relative_to(ROOT)))
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--max-threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llm-caption-bench")
    parser.add_argument("--report", action="store_true", help="also the long clip with the HTML report")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child(
            args.child,
            args.workdir / f"memory_{args.child.stem}.json",
            args.new_tokens,
            args.max_threads,
            args.model,
            args.child_report,
        )
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(
        f"clips {args.size} {args.rate} fps H.264 sampled at 1 fps, batch_size 4, max_new_tokens {args.new_tokens}, "
        f"max_threads {args.max_threads}, model {args.model}; one fresh process per clip"
    )
    results = {}
    for seconds in (args.short, args.long):
        clip = make_clip(
            args.workdir / f"memory_{seconds:g}s_{args.size}_{args.rate}fps.mp4",
            duration=seconds,
            size=args.size,
            rate=args.rate,
        )
        for report in (False, True) if args.report and seconds == args.long else (False,):
            results[seconds, report] = run_child(
                "benchmarks.bench_memory",
                "--child",
                str(clip),
                "--workdir",
                str(args.workdir),
                "--new-tokens",
                str(args.new_tokens),
                "--max-threads",
                str(args.max_threads),
                "--model",
                args.model,
                *(["--child-report"] if report else []),
            )
    print(f"{'video':>7} {'frames':>6} {'batches':>7} {'run s':>6} {'peak RSS MiB':>12}")
    for (seconds, report), r in results.items():
        print(
            f"{seconds:>6g}s {r['frames']:>6} {r['batches']:>7} {r['seconds']:>6.1f} {r['peak_rss_mib']:>12.1f}"
            + ("  with the report" if report else "")
        )
    short, long = (results[s, False]["peak_rss_mib"] for s in (args.short, args.long))
    ratio = long / short
    print(
        f"peak RSS {args.long:g} s / {args.short:g} s: x{ratio:.3f} ({long - short:+.1f} MiB; "
        f"goal within 10%: {'met' if abs(ratio - 1) <= 0.10 else 'missed'})"
    )

    if args.report:
        with_report = results[args.long, True]["peak_rss_mib"]
        ratio = with_report / long
        print(
            f"peak RSS with / without the report ({args.long:g} s): x{ratio:.3f} ({with_report - long:+.1f} MiB; "
            f"goal within 10%: {'met' if abs(ratio - 1) <= 0.10 else 'missed'})"
        )


if __name__ == "__main__":
    sys.exit(main())
