"""Helpers shared by the pipeline benchmarks: clips, timing, model-call recording, child runs.

Every benchmark prints ratios measured within one run of itself, so numbers from one machine are
compared only with numbers from the same machine, load and software.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

# BMF logs every graph start and stop at INFO; a benchmark's table should not drown in it.
os.environ.setdefault("BMF_LOG_LEVEL", "ERROR")

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"
SAMPLE_CLIP = ROOT / "big_bunny_5s_25fps.mp4"


def machine() -> str:
    """One line naming the CPU (with its family and model: "AMD EPYC" alone was Zen 4 on one day
    and Zen 5, with twice the bf16 matmul peak, on another) and core count, printed with every result."""
    import torch

    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields and "model" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def make_clip(
    path: Path,
    *,
    duration: float,
    size: str = "320x240",
    rate: int = 25,
    codec: Sequence[str] = ("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"),
) -> Path:
    """A synthetic H.264 clip (FFmpeg's ``testsrc2``), generated once and reused while it exists.

    testsrc2 moves every frame, so the decoder does the work of a real video of that size; the
    ``veryfast`` preset keeps CABAC and B-frames (High profile), as camera and web videos have.
    """
    if path.exists():
        return path
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is needed to generate the benchmark clips")
    partial = path.with_suffix(".part" + path.suffix)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={rate}:duration={duration}",
            *codec,
            str(partial),
        ],
        check=True,
    )
    partial.rename(path)
    return path


def video_size(clip: Path) -> tuple[int, int]:
    """(width, height) of the clip's video stream, from the pipeline's own probe."""
    from videocaption.media.probe import probe_media

    media = probe_media(clip, keyframes=False)
    return media.width, media.height


def ffmpeg_frames(clip: Path, fps: float, size: tuple[int, int]) -> Iterator[Image.Image]:
    """``ffmpeg -vf fps=N`` piping raw RGB, read back as PIL images of ``size`` (see
    :func:`video_size`): the command-line way to sample frames, for comparison with the pipeline
    and for feeding the model directly."""
    command = [
        "ffmpeg",
        "-v",
        "error",
        "-i",
        str(clip),
        "-vf",
        f"fps={fps:g}",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as ffmpeg:
        assert ffmpeg.stdout is not None
        while chunk := ffmpeg.stdout.read(size[0] * size[1] * 3):
            yield Image.frombytes("RGB", size, chunk)
    if ffmpeg.returncode:
        raise RuntimeError(f"ffmpeg failed ({ffmpeg.returncode}) on {clip}")


@contextlib.contextmanager
def quiet_bmf() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null for the block.

    BMF prints the whole graph config and its queue sizes to stdout on every run (from Python
    and from C++), and the FFmpeg decoder dumps the input's streams to stderr; only a
    descriptor-level redirect silences both. Errors still arrive as Python exceptions.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def median_of(repeats: int, run: Callable[[], float]) -> float:
    """Median of ``repeats`` results of ``run`` (each a duration or a rate)."""
    return statistics.median(run() for _ in range(repeats))


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed:`` ... ``elapsed()`` seconds, frozen at the block's end."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its waited-for children.

    Wall time on a shared 2-core machine moves with whatever else runs; CPU time much less.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# -- what the model was asked ----------------------------------------------------------------


@dataclass
class ModelCall:
    """One call the pipeline made on the model: which method, its arguments, when it ran."""

    method: str  # "describe_batch" or "complete_batch"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    start: float
    end: float
    result: Any = None  # what the model answered (None if it raised)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class CallLog:
    calls: list[ModelCall] = field(default_factory=list)

    def seconds(self, method: str | None = None) -> float:
        return sum(c.seconds for c in self.calls if method is None or c.method == method)

    def of(self, method: str) -> list[ModelCall]:
        return [c for c in self.calls if c.method == method]


@contextlib.contextmanager
def recording_model_calls(model_class: type | None = None) -> Iterator[CallLog]:
    """Record every ``describe_batch`` / ``complete_batch`` call made on ``model_class`` instances.

    The BMF module imports the same ``videocaption`` package in this process, so wrapping the
    class methods sees the calls the pipeline makes, with the exact frames and prompts, without
    changing the pipeline. Recording costs two clock reads and an append per call.
    """
    if model_class is None:
        from videocaption.deepseek_vl2 import DeepseekVL2

        model_class = DeepseekVL2
    log = CallLog()
    lock = threading.Lock()
    originals = {name: getattr(model_class, name) for name in ("describe_batch", "complete_batch")}

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = None
            try:
                result = original(self, *args, **kwargs)
                return result
            finally:
                call = ModelCall(name, args, kwargs, start, time.perf_counter(), result)
                with lock:
                    log.calls.append(call)

        return recorded

    for name, original in originals.items():
        setattr(model_class, name, wrap(name, original))
    try:
        yield log
    finally:
        for name, original in originals.items():
            setattr(model_class, name, original)


def replay(model: Any, calls: Sequence[ModelCall]) -> float:
    """Make the same calls again directly on ``model``, one after another; seconds taken.

    The replay starts without the image features the run's last call left (a replay whose first
    call is about the run's last frames would otherwise skip its vision tower)."""
    if hasattr(model, "forget_image_features"):
        model.forget_image_features()
    with stopwatch() as elapsed:
        for call in calls:
            getattr(model, call.method)(*call.args, **call.kwargs)
    return elapsed()


# -- runs in a fresh process -----------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def report_to_parent(values: dict[str, Any]) -> None:
    """A child run's last stdout line: its measurements as JSON (see :func:`run_child`)."""
    print(json.dumps(values), flush=True)


def run_child(module: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh interpreter; return the JSON of its last line.

    Peak memory is only comparable between runs that each start from an empty process.
    """
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- a BMF sink for decode-only graphs -------------------------------------------------------

# What FrameSink saw, per result key (the sink runs on BMF's thread in this process).
SINK_STATS: dict[str, dict[str, Any]] = {}


@functools.cache
def _frame_sink_class() -> type:
    from bmf import Module, ProcessResult, Timestamp, VideoFrame

    from videocaption.graph.frames import frame_timestamp, video_frame_to_image

    class FrameSink(Module):
        """Converts every frame it gets to an RGB PIL image, as the caption module does, then drops it.

        Option ``key`` names the :data:`SINK_STATS` entry where it counts frames and keeps the
        first image's size, every frame's time and the last one; with option ``digest`` true it
        also keeps a hash of each picture (``digests``), to compare decodes (off when timing).
        """

        def __init__(self, node: int | None = None, option: dict[str, Any] | None = None) -> None:
            self.stats = SINK_STATS.setdefault((option or {})["key"], {"frames": 0})
            self.digest = bool((option or {}).get("digest"))

        def process(self, task) -> int:
            for packets in task.get_inputs().values():
                while not packets.empty():
                    packet = packets.get()
                    if packet.timestamp == Timestamp.EOF:
                        task.timestamp = Timestamp.DONE
                        continue
                    if packet.is_(VideoFrame):
                        frame = packet.get(VideoFrame)
                        seconds = frame_timestamp(packet, frame)
                        image = video_frame_to_image(frame)
                        self.stats["frames"] += 1
                        self.stats.setdefault("size", image.size)
                        self.stats["last_time"] = seconds
                        self.stats.setdefault("times", []).append(seconds)
                        if self.digest:
                            self.stats.setdefault("digests", []).append(hashlib.sha1(image.tobytes()).hexdigest())
            return ProcessResult.OK

    return FrameSink


def __getattr__(name: str) -> Any:
    # BMF loads the sink by entry "benchmarks.common.FrameSink"; bmf is imported only then.
    if name == "FrameSink":
        return _frame_sink_class()
    raise AttributeError(name)
