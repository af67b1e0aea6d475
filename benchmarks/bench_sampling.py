"""Adaptive vs uniform sampling: frames sent, model calls and wall time; the detector's own cost.

Run from the repository root::

    python -m benchmarks.bench_sampling [--new-tokens 32] [--repeats 1]

Why: ``sampling adaptive`` should spend the model only where the video changes. Each clip is
captioned through the whole BMF graph (tiny checkpoint, CPU) with ``uniform`` and with
``adaptive``: frames sent to the model, ``describe_batch`` calls, the batches' model seconds,
and the whole run. The clips (generated once into ``--workdir``, 320x240 25 fps H.264): a 60 s
still picture with light noise (a slide, a static camera), four lavfi sources of 3-6 s joined
(three hard cuts), and the bundled Big Buck Bunny sample.

Then the detector's cost at 720p: :func:`videocaption.graph.frames.frame_thumbnail` on a decoded
1280x720 yuv420p frame and both comparisons, per sampled frame (adaptive also looks at frames
between samples for cuts, one every ``CUT_CHECK_SPACING`` s: ten a 1 fps sample), against the decoder's CPU time per
sampled frame for 1 fps sampling of the 60 s 720p30 H.264 clip of ``bench_decode`` (goal: < 1%).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    ROOT,
    SAMPLE_CLIP,
    SINK_STATS,
    TINY_MODEL,
    cpu_seconds,
    machine,
    make_clip,
    quiet_bmf,
    recording_model_calls,
)
from videocaption.graph.build import decoder_options
from videocaption.graph.frames import frame_thumbnail
from videocaption.graph.runner import run_caption_graph, wait_for_graph
from videocaption.media.probe import probe_media
from videocaption.options import CaptionOptions
from videocaption.sampling.samplers import CUT_CHECK_SPACING
from videocaption.sampling.shots import changed_area, scene_change

SHOTS = [("testsrc2", 4), ("smptebars", 3), ("mandelbrot", 5), ("life=mold=10:ratio=0.1:life_color=#00ff00", 6)]


def ffmpeg(*args: str) -> None:
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_clips(folder: Path) -> dict[str, Path]:
    clips = {
        "static 60 s": folder / "sampling_static.mp4",
        "4 shots 18 s": folder / "sampling_cuts.mp4",
        "sample clip": SAMPLE_CLIP,
    }
    if not clips["static 60 s"].exists():
        ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "smptehdbars=size=320x240:rate=25:duration=60",
            "-vf",
            "noise=alls=10:allf=t,format=yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "26",
            str(clips["static 60 s"]),
        )
    if not clips["4 shots 18 s"].exists():
        inputs = []
        for spec, seconds in SHOTS:
            name, _, extra = spec.partition("=")
            inputs += [
                "-f",
                "lavfi",
                "-i",
                f"{name}=size=320x240:rate=25{':' + extra if extra else ''},trim=duration={seconds}",
            ]
        joined = "".join(f"[{i}]" for i in range(len(SHOTS))) + f"concat=n={len(SHOTS)}:v=1:a=0,format=yuv420p"
        ffmpeg(*inputs, "-filter_complex", joined, "-c:v", "libx264", "-preset", "veryfast", str(clips["4 shots 18 s"]))
    return clips


def caption(clip: Path, options: CaptionOptions) -> dict:
    with recording_model_calls() as log, quiet_bmf():
        started = time.perf_counter()
        result = run_caption_graph(clip, options)
        wall = time.perf_counter() - started
    describes = log.of("describe_batch")
    return {
        "frames": result.frames_analysed,
        "skipped": result.frames_skipped,
        "shots": result.shots or 1,
        "calls": len(describes),
        "model_s": sum(c.seconds for c in describes),
        "wall_s": wall,
    }


def detector_cost_720p(clip: Path, repeats: int = 1000) -> tuple[float, float, float]:
    """CPU seconds for a sampled 720p frame (thumbnail, cut and duplicate measures), for a frame
    between samples (thumbnail and cut measure), and the clip's frame rate."""
    import bmf
    import bmf.hmp as mp

    luma = np.random.default_rng(0).integers(0, 255, size=(720, 1280), dtype=np.uint8)
    chroma = np.full((360, 640), 128, np.uint8)
    planes = [mp.from_numpy(np.ascontiguousarray(p)) for p in (luma, chroma, chroma)]
    frame = bmf.VideoFrame(mp.Frame(planes, mp.PixelInfo(mp.kPF_YUV420P)))
    previous = frame_thumbnail(frame)

    def cpu_per_frame(measures) -> float:
        # This thread's CPU time: on a shared machine wall time mostly measures the neighbours.
        started = time.thread_time()
        for _ in range(repeats):
            current = frame_thumbnail(frame)
            for measure in measures:
                measure(previous, current)
        return (time.thread_time() - started) / repeats

    return (
        cpu_per_frame((scene_change, changed_area)),
        cpu_per_frame((scene_change,)),
        probe_media(clip, keyframes=False).frame_rate or 30.0,
    )


def decode_cpu_per_sample(clip: Path, options: CaptionOptions) -> float:
    """CPU seconds BMF's decoder spends per 1 fps sample of ``clip`` (frames handed to a sink)."""
    import bmf

    from videocaption.sampling.grid import select_expression

    cpu = cpu_seconds()
    with quiet_bmf():
        graph = bmf.graph()
        video = graph.decode(decoder_options(clip, options))["video"].ff_filter("select", select_expression(1.0))
        node = bmf.module(
            [video], "FrameSink", {"key": "sampling-decode"}, module_path=str(ROOT), entry="benchmarks.common.FrameSink"
        )
        wait_for_graph(graph, node)
    return (cpu_seconds() - cpu) / SINK_STATS.pop("sampling-decode")["frames"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(TINY_MODEL.relative_to(ROOT)))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs per clip and mode; the median is shown")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llm-caption-bench")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    clips = make_clips(args.workdir)
    base = CaptionOptions(
        model=args.model,
        device="cpu",
        batch_size=args.batch_size,
        max_new_tokens=args.new_tokens,
        result_path=str(args.workdir / "sampling_result.json"),
    )
    print(f"machine: {machine()}")
    print(
        f"model {args.model}, batch_size {args.batch_size}, max_new_tokens {args.new_tokens}; median of {args.repeats}"
    )
    caption(SAMPLE_CLIP, base)  # burn-in: model load, first shapes
    print(
        f"{'clip':<14} {'sampling':<9} {'frames sent':>11} {'skipped':>7} {'shots':>5} {'model calls':>11} "
        f"{'model s':>7} {'wall s':>6}"
    )
    for name, clip in clips.items():
        rows = {}
        for sampling in ("uniform", "adaptive"):
            runs = [caption(clip, base.replace(sampling=sampling)) for _ in range(args.repeats)]
            row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            rows[sampling] = row
            print(
                f"{name:<14} {sampling:<9} {row['frames']:>11.0f} {row['skipped']:>7.0f} {row['shots']:>5.0f} "
                f"{row['calls']:>11.0f} {row['model_s']:>7.2f} {row['wall_s']:>6.2f}"
            )
        print(
            f"{'':<14} adaptive / uniform: x{rows['adaptive']['calls'] / rows['uniform']['calls']:.2f} model calls, "
            f"x{rows['adaptive']['wall_s'] / rows['uniform']['wall_s']:.2f} wall time"
        )

    clip = make_clip(args.workdir / "decode_60s_1280x720_30fps.mp4", duration=60, size="1280x720", rate=30)
    sampled, between, rate = detector_cost_720p(clip)
    decode = decode_cpu_per_sample(clip, base.replace(sampling="adaptive"))
    looked_at = min(rate, 1 / CUT_CHECK_SPACING)  # frames looked at a 1 fps sample, itself included
    per_sample = sampled + (looked_at - 1) * between
    print(
        f"detector at 720p, CPU: {sampled * 1e6:.0f} us for a sampled frame, {between * 1e6:.0f} us for a frame "
        f"looked at for cuts between samples ({looked_at - 1:g} a 1 fps sample): {per_sample * 1e3:.2f} ms a sample, "
        f"against {decode * 1e3:.1f} ms of decoder CPU a sample: {per_sample / decode:.1%} (goal < 1%: "
        f"{'met' if per_sample / decode < 0.01 else 'missed'}); the sampled frame alone {sampled / decode:.2%}"
    )


if __name__ == "__main__":
    main()
