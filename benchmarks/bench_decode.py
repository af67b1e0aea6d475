"""Decoding and sampling through BMF, up to PIL images, vs the ``ffmpeg`` command line.

Run from the repository root::

    python -m benchmarks.bench_decode [--duration 60] [--size 1280x720] [--rate 30] [--fps 1]
                                      [--sparse-fps 0.1] [--repeats 5]

Why: the pipeline samples inside BMF (decoder -> FFmpeg ``select`` filter -> Python module ->
``video_frame_to_image``) instead of piping ``ffmpeg``; this checks that doing so costs about
what ``ffmpeg -vf fps=1 -f rawvideo -pix_fmt rgb24 -`` costs when both decode every frame (goal:
within 10%), and what decoding only what sampling needs saves (``decode_skip``, see
``videocaption/media/decoding.py``): at ``--fps`` the decoder drops non-reference frames (``nonref``,
what ``auto`` picks at 1 fps); at ``--sparse-fps`` it seeks to each sample (``seek``, what
``auto`` picks once samples lie a keyframe interval apart). Goal: CPU time <= x0.5 of the
full-decode ffmpeg, with samples at most one frame interval from a full decode's. Each mode's
samples are also compared picture by picture with the full decode's (one untimed run each),
and dropping every B-frame (``skip_frame`` ``bidir``, which the pipeline does not offer) is
tried on an x264 ``medium`` encode to show why: its P-frames refer to B-frames.

The BMF side is exactly the caption graph's decode and select
(``videocaption.graph.build.decoder_options``, ``videocaption.sampling.grid.select_expression``) ending in a
tiny module that converts each frame as the caption module does and drops it. The ffmpeg side
reads the raw RGB pipe into PIL images too, so both sides end with the same objects. The clips
(default 60 s, 1280x720, 30 fps H.264, FFmpeg's moving ``testsrc2``) are generated once into
``--workdir``. Runs alternate; medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import (
    ROOT,
    SINK_STATS,
    cpu_seconds,
    ffmpeg_frames,
    machine,
    make_clip,
    quiet_bmf,
    stopwatch,
    video_size,
)
from videocaption.graph.build import decoder_options
from videocaption.graph.runner import wait_for_graph
from videocaption.options import CaptionOptions
from videocaption.sampling.grid import select_expression

# FFmpeg's AVDISCARD_BIDIR: every B-frame dropped (not a pipeline mode; see the docstring).
BIDIR = 16
Run = tuple[float, float, int]  # wall seconds, CPU seconds, frames


def bmf_decode(
    clip: Path, fps: float, key: str, mode: str = "none", *, digest: bool = False, select: str | None = None
) -> Run:
    """The caption graph's decode + select, frames converted to PIL (CPU: every BMF thread).

    ``mode``: a ``decode_skip`` value, or ``bidir`` for FFmpeg's own ``skip_frame`` setting.
    ``select``: another ``select`` expression than uniform sampling's at ``fps``.
    """
    import bmf

    SINK_STATS.pop(key, None)
    if mode == "bidir":
        settings = {**decoder_options(clip), "skip_frame": BIDIR}
    else:
        settings = decoder_options(clip, CaptionOptions(fps=fps, decode_skip=mode, hwaccel="none"))
    cpu = cpu_seconds()
    with stopwatch() as elapsed, quiet_bmf():
        graph = bmf.graph()
        video = graph.decode(settings)["video"]
        video = video.ff_filter("select", select or select_expression(fps))
        node = bmf.module(
            [video],
            "FrameSink",
            {"key": key, "digest": digest},
            module_path=str(ROOT),
            entry="benchmarks.common.FrameSink",
        )
        wait_for_graph(graph, node)
    return elapsed(), cpu_seconds() - cpu, SINK_STATS[key]["frames"]


def ffmpeg_decode(clip: Path, fps: float) -> Run:
    """``ffmpeg -vf fps=N`` piping rgb24, each frame read into a PIL image (CPU: ffmpeg + reader)."""
    size = video_size(clip)  # outside the timing, as the BMF side has no probe either
    cpu = cpu_seconds()
    with stopwatch() as elapsed:
        frames = sum(1 for _ in ffmpeg_frames(clip, fps, size))
    return elapsed(), cpu_seconds() - cpu, frames


def fidelity(clip: Path, fps: float, mode: str) -> tuple[int, int, float]:
    """(pictures that differ from a full decode's picture of the same time, samples, largest
    shift in seconds from a full decode's samples); three untimed runs."""
    bmf_decode(clip, fps, "fidelity-uniform")
    bmf_decode(clip, fps, "fidelity-mode", mode, digest=True)
    uniform, sampled = SINK_STATS.pop("fidelity-uniform"), SINK_STATS.pop("fidelity-mode")
    at_times = "+".join(f"between(t,{t - 1e-3:.6f},{t + 1e-3:.6f})" for t in sampled["times"])
    bmf_decode(clip, fps, "fidelity-full", digest=True, select=at_times)
    full = SINK_STATS.pop("fidelity-full")
    shift = max(abs(a - b) for a, b in zip(sampled["times"], uniform["times"]))
    differing = sum(a != b for a, b in zip(sampled["digests"], full["digests"]))
    return differing + abs(sampled["frames"] - full["frames"]), sampled["frames"], shift


def compare(clip: Path, fps: float, modes: tuple[str, ...], repeats: int, frame: float) -> None:
    """Time each mode and ffmpeg at ``fps`` (alternating runs, medians) and print one table."""
    bmf_decode(clip, fps, "burn-in")  # page cache, codec and filter set-up
    ffmpeg_decode(clip, fps)
    runs: dict[str, list[Run]] = {mode: [] for mode in modes} | {"ffmpeg": []}
    for i in range(repeats):
        for mode in modes:
            runs[mode].append(bmf_decode(clip, fps, f"{mode}{i}", mode))
        runs["ffmpeg"].append(ffmpeg_decode(clip, fps))
    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    exact = {mode: fidelity(clip, fps, mode) for mode in modes if mode != "none"}
    print(f"\nsampling {fps:g} fps")
    print(
        f"{'path':<42} {'frames':>6} {'wall s':>7} {'CPU s':>6} {'CPU / ffmpeg':>12} {'max shift':>9} {'pictures':>14}"
    )
    for key in runs:
        name = "ffmpeg -vf fps + rgb24 pipe + PIL" if key == "ffmpeg" else f"BMF decode_skip {key} + select + PIL"
        moved = f"{exact[key][2] / frame:.1f} fr" if key in exact else ""
        same = f"{exact[key][1] - exact[key][0]}/{exact[key][1]} same" if key in exact else ""
        print(
            f"{name:<42} {runs[key][0][2]:>6} {wall[key]:>7.2f} {cpu[key]:>6.2f} x{cpu[key] / cpu['ffmpeg']:>11.2f} "
            f"{moved:>9} {same:>14}"
        )
    if "none" in modes:
        ratio = cpu["none"] / cpu["ffmpeg"]
        print(
            f"BMF (every frame) / ffmpeg CPU time: x{ratio:.2f} (goal within 10%: {'met' if ratio <= 1.10 else 'missed'})"
        )
    for mode, (differing, samples, shift) in exact.items():
        ratio = cpu[mode] / cpu["ffmpeg"]
        print(
            f"BMF decode_skip {mode} / full-decode ffmpeg CPU time: x{ratio:.2f} (goal <= x0.5: "
            f"{'met' if ratio <= 0.5 else 'missed'}); samples moved by at most {shift / frame:.1f} frame intervals "
            f"(goal <= 1: {'met' if shift <= frame + 1e-6 else 'missed'}); {differing} of {samples} pictures differ"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--fps", type=float, default=1.0, help="dense sampling rate (decode_skip nonref)")
    parser.add_argument("--sparse-fps", type=float, default=0.1, help="sparse sampling rate (decode_skip seek)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llm-caption-bench")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    clip = make_clip(
        args.workdir / f"decode_{args.duration:g}s_{args.size}_{args.rate}fps.mp4",
        duration=args.duration,
        size=args.size,
        rate=args.rate,
    )
    print(f"machine: {machine()}")
    print(
        f"clip: {args.duration:g} s, {args.size}, {args.rate} fps H.264 (x264 veryfast, B-frames); median of {args.repeats}"
    )
    frame = 1 / args.rate
    compare(clip, args.fps, ("none", "nonref"), args.repeats, frame)
    compare(clip, args.sparse_fps, ("none", "seek"), args.repeats, frame)

    medium = make_clip(
        args.workdir / f"decode_20s_{args.size}_{args.rate}fps_medium.mp4",
        duration=20,
        size=args.size,
        rate=args.rate,
        codec=("-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p"),
    )
    differing, samples, shift = fidelity(medium, args.fps, "bidir")
    print(
        f"\nskip_frame bidir (every B-frame dropped; not offered) on a 20 s x264 medium encode at {args.fps:g} fps: "
        f"{differing} of {samples} pictures differ from a full decode, samples up to {shift / frame:.1f} frame "
        "intervals late"
    )


if __name__ == "__main__":
    main()
