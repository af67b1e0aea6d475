"""Decoding and 1 fps sampling through BMF, up to PIL images, vs the ``ffmpeg`` command line.

Run from the repository root::

    python -m benchmarks.bench_decode [--duration 60] [--size 1280x720] [--rate 30] [--repeats 3]

Why: the pipeline samples inside BMF (decoder -> FFmpeg ``select`` filter -> Python module ->
``video_frame_to_image``) instead of piping ``ffmpeg``; this checks that doing so costs about
what ``ffmpeg -vf fps=1 -f rawvideo -pix_fmt rgb24 -`` costs when both decode every frame (goal:
within 10%), and that decoding only what sampling needs (``decode_skip``, see
``videocaption/decoding.py``: the decoder drops non-reference frames, ``nonref``, what ``auto``
picks at 1 fps, or every B-frame, ``bidir``) halves it (goal: CPU time <= x0.5 of the full-decode
ffmpeg). Each skipping mode also reports how far its samples moved from the full decode's
(goal: at most one frame interval). The BMF side is exactly the caption graph's decode and select
(``videocaption.graph.decoder_options``, ``videocaption.frames.select_expression``) ending in a
tiny module that converts each frame as the caption module does and drops it. The ffmpeg side reads the raw RGB pipe into PIL images too,
so both sides end with the same objects. The clip (default 60 s, 1280x720, 30 fps H.264,
FFmpeg's moving ``testsrc2``) is generated once into ``--workdir``. Runs alternate; medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import (ROOT, SINK_STATS, cpu_seconds, ffmpeg_frames, machine, make_clip, quiet_bmf, stopwatch,
                               video_size)
from videocaption.frames import select_expression
from videocaption.graph import decoder_options, wait_for_graph
from videocaption.options import CaptionOptions

# The caption graph's decoder settings per decode_skip mode ("none": every frame, as before).
MODES = ("none", "nonref", "bidir")


Run = tuple[float, float, int]  # wall seconds, CPU seconds, frames


def bmf_decode(clip: Path, fps: float, key: str, mode: str = "none") -> Run:
    """The caption graph's decode + select, frames converted to PIL (CPU: every BMF thread)."""
    import bmf

    SINK_STATS.pop(key, None)
    settings = decoder_options(clip, CaptionOptions(fps=fps, decode_skip=mode, hwaccel="none"))
    cpu = cpu_seconds()
    with stopwatch() as elapsed, quiet_bmf():
        graph = bmf.graph()
        video = graph.decode(settings)["video"]
        video = video.ff_filter("select", select_expression(fps))
        node = bmf.module([video], "FrameSink", {"key": key}, module_path=str(ROOT), entry="benchmarks.common.FrameSink")
        wait_for_graph(graph, node)
    return elapsed(), cpu_seconds() - cpu, SINK_STATS[key]["frames"]


def ffmpeg_decode(clip: Path, fps: float) -> Run:
    """``ffmpeg -vf fps=N`` piping rgb24, each frame read into a PIL image (CPU: ffmpeg + reader)."""
    size = video_size(clip)  # outside the timing, as the BMF side has no probe either
    cpu = cpu_seconds()
    with stopwatch() as elapsed:
        frames = sum(1 for _ in ffmpeg_frames(clip, fps, size))
    return elapsed(), cpu_seconds() - cpu, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llm-caption-bench")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    clip = make_clip(args.workdir / f"decode_{args.duration:g}s_{args.size}_{args.rate}fps.mp4",
                     duration=args.duration, size=args.size, rate=args.rate)
    print(f"machine: {machine()}")
    print(f"clip: {args.duration:g} s, {args.size}, {args.rate} fps H.264; sampling {args.fps:g} fps; median of {args.repeats}")

    bmf_decode(clip, args.fps, "burn-in")  # page cache, codec and filter set-up
    ffmpeg_decode(clip, args.fps)
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES} | {"ffmpeg": []}
    for i in range(args.repeats):
        for mode in MODES:
            runs[mode].append(bmf_decode(clip, args.fps, f"{mode}{i}", mode))
        runs["ffmpeg"].append(ffmpeg_decode(clip, args.fps))
    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    frame = 1 / args.rate
    shift = {mode: max(abs(a - b) for a, b in zip(SINK_STATS[f"{mode}0"]["times"], SINK_STATS["none0"]["times"]))
             for mode in MODES}
    print(f"{'path':<44} {'frames':>6} {'wall s':>7} {'CPU s':>6} {'frames/s':>8} {'CPU / ffmpeg':>12} {'max shift':>9}")
    for key in runs:
        name = "ffmpeg -vf fps + rgb24 pipe + PIL" if key == "ffmpeg" else f"BMF decode_skip {key} + select + PIL"
        moved = "" if key == "ffmpeg" else f"{shift[key] / frame:.1f} fr"
        print(f"{name:<44} {runs[key][0][2]:>6} {wall[key]:>7.2f} {cpu[key]:>6.2f} {runs[key][0][2] / wall[key]:>8.1f} "
              f"x{cpu[key] / cpu['ffmpeg']:>11.2f} {moved:>9}")
    for what, values in (("wall", wall), ("CPU", cpu)):
        ratio = values["none"] / values["ffmpeg"]
        verdict = "met" if ratio <= 1.10 else "missed"
        print(f"BMF (every frame) / ffmpeg {what} time: x{ratio:.2f} ({(ratio - 1) * 100:+.1f}%; goal within 10%: {verdict})")
    for mode in ("nonref", "bidir"):
        ratio = cpu[mode] / cpu["ffmpeg"]
        print(f"BMF decode_skip {mode} / full-decode ffmpeg CPU time: x{ratio:.2f} (goal <= x0.5: "
              f"{'met' if ratio <= 0.5 else 'missed'}); samples moved by at most {shift[mode] / frame:.1f} frame "
              f"intervals (goal <= 1: {'met' if shift[mode] <= frame + 1e-6 else 'missed'})")


if __name__ == "__main__":
    main()
