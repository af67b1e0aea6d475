"""A library of short clips on Ray: videos/min with 1 and 2 workers, and Ray's cost per video.

Run from the repository root::

    python -m benchmarks.bench_corpus [--clips 8] [--seconds 8] [--new-tokens 32] [--batch-size 4]

Why: library mode should scale with workers (goal: 2 workers x 1 CPU at least x1.7 the videos/min
of 1 worker x 1 CPU on a 2-core machine) and Ray should add little to each video (goal: under
0.5 s against a plain in-process loop over the same files). The clips are synthetic 320x240
H.264 (``testsrc2``) and the model the tiny reference checkpoint, so the numbers measure the
machinery, not a real model. Every side runs torch on one thread per worker, loads the model
once, and captions the same clips with the same options:

- loop: ``probe_input`` + ``run_caption_graph`` per clip in this process (what a worker does);
- Ray: ``run_library`` on a local instance started once (its start-up is reported apart) with
  1 worker x 1 CPU, then 2 workers x 1 CPU, each into a fresh output folder.

The workers' CPU seconds per video (the manifest's ``cpu_seconds``) show whether a missed
speed-up is the machine's (other work taking the cores: CPU per video unchanged) or ours.
"Steady" rates start when the first video starts (the first row's arrival less its own time),
so they leave out starting the workers and loading their models, which the loop also pays once.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, TINY_MODEL, cpu_seconds, machine, make_clip, quiet_bmf, stopwatch
from videocaption.options import CaptionOptions


def plain_loop(clips: list[Path], options: CaptionOptions, output: Path) -> dict[str, float]:
    """Load the model, then caption the clips one after another in this process."""
    import torch

    from videocaption.backends import load_model
    from videocaption.graph.build import probe_input
    from videocaption.graph.runner import run_caption_graph

    torch.set_num_threads(1)
    with stopwatch() as loading:
        load_model(options)
    cpu = cpu_seconds()
    with stopwatch() as elapsed, quiet_bmf():
        for clip in clips:
            video_options = options.replace(result_path=str(output / clip.stem / "result.json"), resume=True)
            run_caption_graph(clip, video_options, media=probe_input(clip, video_options))
    return {"load_s": loading(), "videos_s": elapsed(), "cpu_per_video_s": (cpu_seconds() - cpu) / len(clips)}


def on_ray(clips: list[Path], options: CaptionOptions, output: Path, workers: int) -> dict[str, float]:
    """One library run; whole and steady seconds (see the module's docstring)."""
    from videocaption.library.command import MANIFEST_NAME
    from videocaption.library.ray_runner import LibraryConfig, run_library

    arrivals: list[tuple[float, float]] = []  # (arrival, the video's own seconds)
    config = LibraryConfig(
        inputs=tuple(map(str, clips)),
        output_dir=output,
        manifest_path=output / MANIFEST_NAME,
        workers=workers,
        cpus_per_worker=1.0,
    )
    started = time.perf_counter()
    run = run_library(
        config, options, on_row=lambda row, _left: arrivals.append((time.perf_counter(), row.wall_seconds or 0.0))
    )
    ended = time.perf_counter()
    assert [row.status for row in run.rows] == ["ok"] * len(clips), [row.error for row in run.rows]
    first_start = min(arrival - own for arrival, own in arrivals)
    return {
        "whole_s": ended - started,
        "steady_s": ended - first_start,
        "wall_per_video_s": statistics.median(row.wall_seconds for row in run.captioned),
        "cpu_per_video_s": statistics.median(row.cpu_seconds for row in run.captioned),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each clip")
    parser.add_argument("--model", default=str(TINY_MODEL.relative_to(ROOT)))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    import ray

    workdir = Path(tempfile.mkdtemp(prefix="llm-caption-bench-corpus-"))
    (workdir / "clips").mkdir()
    clips = [make_clip(workdir / "clips" / f"clip{index}.mp4", duration=args.seconds) for index in range(args.clips)]
    options = CaptionOptions(model=args.model, device="cpu", max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    print(
        f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} (over the cores: other work is running)"
        if os.getloadavg()[0] > (os.cpu_count() or 1) / 2
        else f"machine: {machine()}"
    )
    print(
        f"{len(clips)} clips of {args.seconds:g} s (320x240, 25 fps), batch_size {args.batch_size}, fps "
        f"{options.fps:g}, max_new_tokens {args.new_tokens}, model {args.model}"
    )

    loop = plain_loop(clips, options, workdir / "loop")
    with stopwatch() as starting:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        one = on_ray(clips, options, workdir / "ray1", workers=1)
        two = on_ray(clips, options, workdir / "ray2", workers=2)
    finally:
        ray.shutdown()

    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    n = len(clips)
    rate = {
        name: n / seconds * 60
        for name, seconds in [
            ("loop", loop["videos_s"]),
            ("one", one["steady_s"]),
            ("two", two["steady_s"]),
            ("one_whole", one["whole_s"]),
            ("two_whole", two["whole_s"]),
        ]
    }
    print(f"ray.init (local instance, once per cluster): {starting():.2f} s")
    print(
        f"{'run':<22} {'whole s':>8} {'steady s':>9} {'videos/min whole':>17} {'videos/min steady':>18} "
        f"{'s/video':>8} {'CPU s/video':>12}"
    )
    print(
        f"{'in-process loop':<22} {loop['load_s'] + loop['videos_s']:>8.2f} {loop['videos_s']:>9.2f} "
        f"{n / (loop['load_s'] + loop['videos_s']) * 60:>17.1f} {rate['loop']:>18.1f} "
        f"{loop['videos_s'] / n:>8.2f} {loop['cpu_per_video_s']:>12.2f}"
    )
    for name, label, run in (("one", "Ray 1 worker x 1 CPU", one), ("two", "Ray 2 workers x 1 CPU", two)):
        print(
            f"{label:<22} {run['whole_s']:>8.2f} {run['steady_s']:>9.2f} {rate[name + '_whole']:>17.1f} "
            f"{rate[name]:>18.1f} {run['wall_per_video_s']:>8.2f} {run['cpu_per_video_s']:>12.2f}"
        )
    print("(s/video: the loop's mean, the workers' median; CPU s/video: every thread of the process captioning it)")
    speedup = rate["two"] / rate["one"]
    overhead = (one["steady_s"] - loop["videos_s"]) / n
    print(
        f"2 workers vs 1 (steady): x{speedup:.2f} (whole: x{rate['two_whole'] / rate['one_whole']:.2f}); "
        f"goal >= x1.7: {'met' if speedup >= 1.7 else 'missed'}"
    )
    print(
        f"Ray's overhead per video vs the loop (steady, 1 worker): {overhead:+.3f} s; with starting the worker "
        f"and loading its model: {(one['whole_s'] - loop['load_s'] - loop['videos_s']) / n:+.3f} s; "
        f"goal < 0.5 s: {'met' if overhead < 0.5 else 'missed'}"
    )


if __name__ == "__main__":
    main()
