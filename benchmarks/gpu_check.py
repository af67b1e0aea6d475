"""A GPU check for a bare machine: the DeepSeek-VL2 tests on CUDA, then the real-size model's speed.

Run from the repository root with the machine's own Python (torch with CUDA, transformers and
pytest are all it needs: no BMF, no FFmpeg, no network)::

    python3 -m benchmarks.gpu_check                      # about 2 to 4 minutes on one GPU
    python3 -m benchmarks.gpu_check --output figures.json --batch-sizes 1,4,8
    python3 -m benchmarks.gpu_check --device cpu --quick # the same code path on a CPU, in a minute

What it does, in order:

1. runs the DeepSeek-VL2 parity, batching and language tests on the device, once in float32
   (at the tests' float32 tolerances, TensorFloat-32 off) and once in bfloat16 (relative error;
   see ``tests/accelerator.py``), each in its own pytest process;
2. builds the real deepseek-vl2-tiny architecture with random weights in bfloat16 (as
   :mod:`benchmarks.bench_full_size` builds it: no download) and describes the sample clip's
   frames, stored as JPEG in ``tests/fixtures/frames`` (no decoding), at each batch size: one
   batch a call, then ``--batches-per-call`` batches in one call as the pipeline makes them
   with ``multithreading``. Random weights never pick ``eos`` on purpose, so every answer is
   ``--new-tokens`` long;
3. times the decode step of one text prompt eagerly and under ``torch.compile(dynamic=True)``
   (the decode loop has no host sync but its stop check, so the decoder can be compiled; the
   KV cache's Python bookkeeping may still break the graph: the figure says whether it pays).

It prints, per batch size, the peak ``torch.cuda.max_memory_allocated``, seconds per batch and
per frame, and frames per second with batched calls (at 1 frame per second of video, that is
also the realtime factor), and writes the same figures to ``--output`` as JSON. ``--quick``
runs a few tests and the tiny reference checkpoint instead of the real-size network, to check
the code path where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FRAMES = sorted((ROOT / "tests" / "fixtures" / "frames").glob("bunny_t*.jpg"), key=lambda p: int(p.stem[7:]))
TINY_MODEL = ROOT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"
TEST_FILES = [
    "tests/test_deepseek_vl2_parity.py",
    "tests/test_deepseek_vl2_batching.py",
    "tests/test_deepseek_vl2_language.py",
]
# --quick: one parity case, one batching check, one decoder check
QUICK_TESTS = "01_single_image or batched_equals_one_by_one or cache_matches_full_forward"
NEEDED = {
    "torch": "torch",
    "PIL": "Pillow",
    "numpy": "numpy",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "pytest": "pytest",
}


def fail(message: str) -> None:
    """One line on stderr, exit code 2: what a bare machine lacks is said, not traced back."""
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_environment(device: str) -> None:
    missing = [package for module, package in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        fail(
            f"missing Python packages: {', '.join(missing)} (install them, e.g. python3 -m pip install {' '.join(missing)})"
        )
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        fail(
            f"CUDA is not available (torch {torch.__version__}, {build}); "
            "run with --device cpu --quick to check the code path without a GPU"
        )
    if not FRAMES:
        fail(f"no frames under {ROOT / 'tests' / 'fixtures' / 'frames'}")


# -- 1. the tests on the device -------------------------------------------------------------


def run_tests(device: str, dtype: str, quick: bool) -> dict[str, Any]:
    """The DeepSeek-VL2 numerics tests in a fresh pytest process on ``device`` in ``dtype``."""
    env = {**os.environ, "LLM_CAPTION_TEST_DEVICE": device, "LLM_CAPTION_TEST_DTYPE": dtype}
    # --noconftest: these tests need no shared fixtures, and a conftest may import BMF
    command = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "--noconftest", "-p", "no:cacheprovider"]
    if quick:
        command += ["-k", QUICK_TESTS]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    summary = re.sub(r" in [\d.]+s.*$", "", lines[-1].strip("= ")) if lines else "no output"
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    result = {
        "dtype": dtype,
        "passed": done.returncode == 0,
        "summary": summary,
        "seconds": round(seconds, 1),
        **counts,
    }
    if done.returncode != 0:
        failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        result["failures"] = failures or (done.stdout + done.stderr)[-3000:].splitlines()
    return result


# -- 2. the model's speed -----------------------------------------------------------------


def build_model(device: str, dtype: str, quick: bool):
    """The real-size random-weight network, or with ``quick`` the tiny reference checkpoint."""
    from videocaption.backends.deepseek_vl2_backend import DeepseekVL2

    if quick:
        model = DeepseekVL2.from_pretrained(TINY_MODEL, device=device, dtype=dtype)
    else:
        from benchmarks.bench_full_size import build_runtime

        model = build_runtime(device, dtype, weights=True)
    model.processor.eos_id = -1  # random weights: every answer is exactly max_new_tokens long
    return model


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: Any) -> float:
    """Peak ``torch.cuda.max_memory_allocated`` since the last reset, or the process's peak RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from benchmarks.common import peak_rss_mib

    return peak_rss_mib()


def requests_for(model, batch_size: int, count: int) -> list[tuple[list, str]]:
    """``count`` batch prompts of ``batch_size`` consecutive frames, prepared as the pipeline does."""
    from PIL import Image

    from videocaption.options import DEFAULT_BATCH_PROMPT
    from videocaption.prompts import batch_prompt

    images = [Image.open(path).convert("RGB") for path in FRAMES]
    requests = []
    for first in range(0, batch_size * count, batch_size):
        seconds = [float(i) for i in range(first, first + batch_size)]
        frames = [model.prepare_image(images[i % len(images)], batch_size) for i in range(first, first + batch_size)]
        requests.append((frames, batch_prompt(DEFAULT_BATCH_PROMPT, seconds, time_aware=True)))
    return requests


def timed_call(model, requests, new_tokens: int) -> tuple[float, Any]:
    synchronize(model.device)
    start = time.perf_counter()
    answers = model.describe_batch(requests, max_new_tokens=new_tokens)
    synchronize(model.device)
    return time.perf_counter() - start, answers


def measure(model, batch_size: int, batches_per_call: int, new_tokens: int) -> dict[str, Any]:
    """One batch a call, then ``batches_per_call`` batches in one call; after an untimed warm-up."""
    import torch

    single, grouped = requests_for(model, batch_size, 1), requests_for(model, batch_size, batches_per_call)
    model.describe_batch(single, max_new_tokens=2)  # warm-up: kernels, allocator, caches
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.device)
    seconds, answers = timed_call(model, single, new_tokens)
    peak_single = peak_mib(model.device)
    grouped_seconds, grouped_answers = timed_call(model, grouped, new_tokens)
    usage = answers.usage[0]
    frames = batch_size * batches_per_call
    return {
        "batch_size": batch_size,
        "prompt_tokens": usage.prompt_tokens,
        "image_tokens": usage.image_tokens,
        "generated_tokens": usage.generated_tokens,
        "s_per_batch": round(seconds, 3),
        "s_per_frame": round(seconds / batch_size, 3),
        "peak_mib_one_batch": round(peak_single, 1),
        "batches_per_call": batches_per_call,
        "s_per_call_batched": round(grouped_seconds, 3),
        "frames_per_s_batched": round(frames / grouped_seconds, 3),
        "generated_tokens_per_s_batched": round(
            sum(u.generated_tokens for u in grouped_answers.usage) / grouped_seconds, 1
        ),
        "peak_mib": round(peak_mib(model.device), 1),
    }


def decode_step_ms(model, new_tokens: int, compiled: bool) -> float | str:
    """Steady-state ms per decoded token of one text prompt, eager or under ``torch.compile``.

    The decode loop has one host read per token and the experts run as grouped GEMMs, so the
    decoder is compilable; the KV cache grows by a column per step, hence ``dynamic=True``. A
    failure to compile is reported in one line instead of the figure.
    """
    import torch

    from videocaption.deepseek_vl2.generation import generate
    from videocaption.deepseek_vl2.threads import run_on_model_thread

    decoder = model.model.language.model
    forward = decoder.forward
    if compiled:
        decoder.forward = torch.compile(forward, dynamic=True)

    @torch.inference_mode()
    def run() -> float:
        batch = model._batch([([], "Describe a rabbit in a forest in many words.")]).to(model.device)
        embeds = model.model.prepare_inputs_embeds(batch.input_ids)
        for _ in range(2):  # the first call compiles (or warms the kernels)
            out = generate(
                model.model.language, embeds, batch.attention_mask, max_new_tokens=new_tokens, eos_token_id=-1
            )
        return out.decode_s / (new_tokens - 1) * 1000

    try:
        return round(run_on_model_thread(run), 2)
    except Exception as exc:  # noqa: BLE001 - a compiler missing or refusing: say so, keep the rest of the check
        return f"not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    finally:
        decoder.forward = forward


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --quick, to check the code path)")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--batches-per-call", type=int, default=4, help="batched calls: batches described in one call")
    parser.add_argument("--new-tokens", type=int, help="tokens per answer (default 32; 4 with --quick)")
    parser.add_argument("--output", type=Path, default=Path("gpu_check.json"), help="the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="a few tests and the tiny reference checkpoint")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-compile", action="store_true", help="no eager vs torch.compile decode-step timing")
    args = parser.parse_args()
    new_tokens = args.new_tokens or (4 if args.quick else 32)
    sizes = [int(size) for size in args.batch_sizes.split(",")]

    check_environment(args.device)
    import torch

    started = time.perf_counter()
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
        "tests": [],
    }
    if not args.skip_tests:
        for dtype in ("float32", "bfloat16"):
            print(f"tests on {args.device} in {dtype} ...", flush=True)
            result = run_tests(args.device, dtype, args.quick)
            report["tests"].append(result)
            print(f"  {result['summary']} ({result['seconds']:.0f} s)", flush=True)
            for line in result.get("failures", [])[:20]:
                print(f"    {line}")

    start = time.perf_counter()
    model = build_model(args.device, "bfloat16", args.quick)
    params = sum(p.numel() for p in model.model.parameters())
    report.update(
        device=device_name(model.device),
        model="tiny reference checkpoint" if args.quick else "deepseek-vl2-tiny architecture, random weights",
        dtype="bfloat16",
        parameters=params,
        build_s=round(time.perf_counter() - start, 1),
        new_tokens=new_tokens,
        peak_kind="torch.cuda.max_memory_allocated" if model.device.type == "cuda" else "process peak RSS",
    )
    print(
        f"{report['model']} ({params / 1e6:,.1f} M parameters, bfloat16) on {report['device']}; "
        f"{new_tokens} new tokens an answer",
        flush=True,
    )
    print(
        f"{'batch':>5} {'prompt tok':>10} {'s/batch':>8} {'s/frame':>8} {'peak MiB':>9}   "
        f"{'batched: batches/call':>21} {'s/call':>7} {'frames/s':>8} {'peak MiB':>9}",
        flush=True,
    )
    report["batches"] = []
    for size in sizes:
        row = measure(model, size, args.batches_per_call, new_tokens)
        report["batches"].append(row)
        print(
            f"{size:>5} {row['prompt_tokens']:>10} {row['s_per_batch']:>8.2f} {row['s_per_frame']:>8.3f} "
            f"{row['peak_mib_one_batch']:>9.0f}   {args.batches_per_call:>21} {row['s_per_call_batched']:>7.2f} "
            f"{row['frames_per_s_batched']:>8.2f} {row['peak_mib']:>9.0f}",
            flush=True,
        )
    if not args.skip_compile:
        report["decode_step_ms"] = {
            mode: decode_step_ms(model, new_tokens, mode == "torch.compile") for mode in ("eager", "torch.compile")
        }
        print(
            "decode step, one text prompt: "
            + ", ".join(
                f"{mode} {ms if isinstance(ms, str) else f'{ms:.2f} ms'}"
                for mode, ms in report["decode_step_ms"].items()
            ),
            flush=True,
        )
    best = max(report["batches"], key=lambda r: r["frames_per_s_batched"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(
        f"best: batch_size {best['batch_size']} batched, {best['frames_per_s_batched']:.2f} frames/s = "
        f"x{best['frames_per_s_batched']:.1f} realtime at 1 sampled frame per second of video "
        f"(summary and title passes not counted); peak memory is {report['peak_kind']}"
    )
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.output}; whole check {report['seconds']:.0f} s")
    if not all(result["passed"] for result in report["tests"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
