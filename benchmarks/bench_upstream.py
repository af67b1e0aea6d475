"""Our DeepSeek-VL2 runtime against the upstream implementation, same random weights, interleaved.

Run from the repository root (upstream's checkout and venv: ``scripts/setup_upstream.sh``)::

    python -m benchmarks.bench_upstream --upstream /path/to/DeepSeek-VL2 \\
        --upstream-python /path/to/upstream-venv/bin/python [--dtype bfloat16|int8]
        [--new-tokens 256] [--repeats 3] [--cache DIR]

Why: "faster than upstream" means nothing unless both run the same network on the same input. This
builds the full-size deepseek-vl2-tiny architecture with random weights once
(:func:`benchmarks.bench_full_size.build_runtime`, seed 0) and saves it in the official checkpoint
layout (sharded safetensors + the official ``config.json`` + the reference fixture's processor and
tokenizer files), so that both implementations load the very same files. Each side then describes
one batch of 4 frames of the sample clip (prepared as the pipeline prepares them, with the
pipeline's prompt), ``--new-tokens`` tokens forced (eos never ends it), greedy:

* ours: ``DeepseekVL2.from_pretrained(dir, dtype=...)`` and one ``describe`` call;
* upstream: ``DeepseekVLV2Processor`` + ``DeepseekVLV2ForCausalLM`` in bfloat16,
  ``prepare_inputs_embeds`` and ``language.generate(min_new_tokens=max_new_tokens)``, run by
  ``benchmarks/upstream_runner.py`` in upstream's own venv (it pins transformers 4.38.2).

Every run is a fresh child process (one model in memory at a time), alternating ours / upstream
``--repeats`` times, so that a change of machine load hits both sides alike. Reported per side: min
and median of the whole call, of the time to the first token (processor + vision + prompt forward)
and of the time per later token; and the ratio upstream / ours. The first pair also saves the first
token's logits of both, whose cosine shows that the weights and inputs really are the same.
Where upstream cannot be set up (no checkout, no venv, import fails, the run fails), one line says
why and ours is reported alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, TINY_MODEL, machine, report_to_parent, run_child

RUNNER = ROOT / "benchmarks" / "upstream_runner.py"
FRAMES = 4
FIXTURE_FILES = ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SHARD_BYTES = 1 << 30  # shards of about 1 GiB: only one shard's copy is in memory at a time


def upstream_problem(checkout: str | None, python: str | None) -> str | None:
    """Why upstream cannot run here, in one line, or None when it can (its import works)."""
    if not checkout:
        return "no --upstream checkout given"
    if not (Path(checkout) / "deepseek_vl2" / "models").is_dir():
        return f"--upstream {checkout} is not a DeepSeek-VL2 checkout (no deepseek_vl2/models)"
    if not python or not Path(python).exists():
        return f"--upstream-python {python} does not exist (see scripts/setup_upstream.sh)"
    try:
        done = subprocess.run(
            [python, str(RUNNER), checkout, "--probe"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"its python cannot run: {exc}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return f"importing it fails: {lines[-1]}"
    return None


# -- the shared checkpoint -------------------------------------------------------------------


def save_checkpoint(out_dir: Path) -> None:
    """In a child process: the full-size random network as an official checkpoint in ``out_dir``.

    Our ``state_dict`` speaks the checkpoint's keys; the stacked experts' entries are views of one
    tensor, which safetensors refuses to save as such, so every shard is cloned before writing.
    """
    from safetensors.torch import save_file

    from benchmarks.bench_full_size import build_runtime, official_config_dict

    runtime = build_runtime("cpu", "bfloat16", weights=True)
    state = runtime.model.state_dict()
    partial = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shards: list[list[str]] = [[]]
    size = 0
    for key, value in state.items():
        if size > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += value.numel() * value.element_size()
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k].detach().clone() for k in keys}, partial / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    (partial / "config.json").write_text(json.dumps(official_config_dict(), indent=2))
    for name in FIXTURE_FILES:
        shutil.copy(TINY_MODEL / name, partial / name)
    partial.rename(out_dir)
    report_to_parent({"tensors": len(state), "bytes": total, "shards": len(shards)})


def prepare_job(cache: Path) -> tuple[Path, list[str], str]:
    """The checkpoint (made once), the 4 prepared frames as PNG files, and the pipeline's prompt."""
    from benchmarks.bench_full_size import build_runtime, sample_frames
    from videocaption.options import DEFAULT_BATCH_PROMPT
    from videocaption.prompts import batch_prompt

    model_dir = cache / "deepseek-vl2-tiny-random"
    if not model_dir.exists():
        print(f"saving the full-size random-weight checkpoint to {model_dir} ...", flush=True)
        r = run_child("benchmarks.bench_upstream", "--save-checkpoint", str(model_dir), timeout=3600)
        print(f"  {r['tensors']} tensors, {r['bytes'] / 2**30:.2f} GiB in {r['shards']} shards", flush=True)
    runtime = build_runtime("cpu", "bfloat16", weights=False)  # meta tensors: only the geometry is used
    frames = sample_frames(FRAMES)
    paths = []
    for i, (image, _) in enumerate(frames):
        path = cache / f"frame{i}.png"
        runtime.prepare_image(image, FRAMES).save(path)
        paths.append(str(path))
    prompt = batch_prompt(DEFAULT_BATCH_PROMPT, [t for _, t in frames], time_aware=True)
    return model_dir, paths, prompt


# -- one run of each side ----------------------------------------------------------------------


def ours_child(job: dict[str, Any]) -> None:
    """In a fresh process: load the checkpoint with our runtime, describe the 4 frames once."""
    from PIL import Image

    import videocaption.backends.deepseek_vl2_backend as backend
    from videocaption.deepseek_vl2 import DeepseekVL2

    start = time.perf_counter()
    runtime = DeepseekVL2.from_pretrained(job["model"], device="cpu", dtype=job["dtype"])
    load_s = time.perf_counter() - start
    runtime.processor.eos_id = -1  # random weights: decode exactly new_tokens tokens
    outputs: list[tuple[Any, float]] = []
    plain_generate = backend.generate

    def timed_generate(*args, **kwargs):
        out = plain_generate(*args, **kwargs)
        outputs.append((out, time.perf_counter()))
        return out

    backend.generate = timed_generate
    language = runtime.model.language
    first_logits: list[torch.Tensor] = []
    if job.get("logits"):
        plain_logits = language.logits

        def keep_first(hidden):
            logits = plain_logits(hidden)
            if not first_logits:
                first_logits.append(logits[0].float().clone())
            return logits

        language.logits = keep_first
    images = [Image.open(path).convert("RGB") for path in job["images"]]
    new_tokens = int(job["new_tokens"])
    start = time.perf_counter()
    runtime.describe(images, job["prompt"], max_new_tokens=new_tokens)
    call_s = time.perf_counter() - start
    out, returned = outputs[0]
    generated = out.lengths[0]
    if first_logits:
        torch.save(first_logits[0], job["logits"])
    report_to_parent(
        {
            "side": "ours",
            "dtype": job["dtype"],
            "load_s": load_s,
            "call_s": call_s,
            "first_token_s": returned - out.decode_s - start,
            "decode_per_token_s": out.decode_s / max(generated - 1, 1),
            "new_tokens": generated,
            "prompt_tokens": runtime.count_tokens(job["prompt"], [im.size for im in images]),
            "torch_threads": torch.get_num_threads(),
        }
    )


def run_ours(job: dict[str, Any], job_path: Path) -> dict[str, Any]:
    job_path.write_text(json.dumps(job))
    return run_child("benchmarks.bench_upstream", "--ours-child", str(job_path), timeout=3600)


def run_upstream(job: dict[str, Any], job_path: Path, checkout: str, python: str) -> dict[str, Any]:
    job_path.write_text(json.dumps({**job, "dtype": "bfloat16"}))
    done = subprocess.run(
        [python, str(RUNNER), checkout, str(job_path)],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=tempfile.gettempdir(),
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(lines[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the report ----------------------------------------------------------------------------------

METRICS = (
    ("call_s", "whole call", "s"),
    ("first_token_s", "first token", "s"),
    ("decode_per_token_s", "per token", "ms"),
)


def summary_lines(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Min and median of each metric per side, and upstream / ours of the medians and of the mins."""
    lines = [f"{'':>12} {'side':>8} {'runs':>4} {'min':>9} {'median':>9}"]
    for key, label, unit in METRICS:
        scale = 1000.0 if unit == "ms" else 1.0
        stats = {}
        for side, runs in rows.items():
            values = [r[key] * scale for r in runs]
            if not values:
                continue
            stats[side] = (min(values), statistics.median(values))
            lines.append(
                f"{label:>12} {side:>8} {len(values):>4} {stats[side][0]:>7.2f}{unit:<2} {stats[side][1]:>7.2f}{unit:<2}"
            )
        if "ours" in stats and "upstream" in stats:
            lines.append(
                f"{label:>12} {'ratio':>8}      upstream / ours: {stats['upstream'][0] / stats['ours'][0]:.2f}x (min), "
                f"{stats['upstream'][1] / stats['ours'][1]:.2f}x (median)"
            )
    return lines


def run_line(r: dict[str, Any]) -> str:
    """One run's figures, printed as it ends (a long run's partial results survive an interrupt)."""
    return (
        f"call {r['call_s']:.1f} s, first token {r['first_token_s']:.1f} s, "
        f"{r['decode_per_token_s'] * 1000:.1f} ms/token, {r['new_tokens']} tokens (load {r['load_s']:.1f} s, "
        f"load average {os.getloadavg()[0]:.1f})"
    )


def cosine(a_path: str, b_path: str) -> tuple[float, bool]:
    """Cosine of two saved first-token logit vectors, and whether their argmax agrees."""
    a, b = torch.load(a_path).double(), torch.load(b_path).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)), bool(a.argmax() == b.argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="a DeepSeek-VL2 checkout (github.com/deepseek-ai/DeepSeek-VL2)")
    parser.add_argument("--upstream-python", help="the python of upstream's venv (scripts/setup_upstream.sh)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "int8"], help="ours; upstream is bfloat16")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cache", default=str(Path(tempfile.gettempdir()) / "llm-caption-bench-upstream"), help="checkpoint + frames"
    )
    parser.add_argument("--save-checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--ours-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save_checkpoint:
        save_checkpoint(Path(args.save_checkpoint))
        return
    if args.ours_child:
        ours_child(json.loads(Path(args.ours_child).read_text()))
        return
    if args.new_tokens < 1 or args.repeats < 1:
        parser.error("--new-tokens and --repeats must be at least 1")

    problem = upstream_problem(args.upstream, args.upstream_python)
    if problem:
        print(f"upstream not run: {problem}; reporting ours alone", flush=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model_dir, images, prompt = prepare_job(cache)
    job = {"model": str(model_dir), "images": images, "prompt": prompt, "new_tokens": args.new_tokens}
    print(
        f"deepseek-vl2-tiny architecture, random weights (seed 0), {FRAMES} frames of the sample clip, "
        f"{args.new_tokens} new tokens forced; ours {args.dtype}, upstream bfloat16; {args.repeats} interleaved repeat(s)",
        flush=True,
    )
    rows: dict[str, list[dict[str, Any]]] = {"ours": [], "upstream": []}
    logits = {"ours": str(cache / "first_logits_ours.pt"), "upstream": str(cache / "first_logits_upstream.pt")}
    for repeat in range(args.repeats):
        first = {"logits": logits["ours"]} if repeat == 0 else {}
        r = run_ours({**job, **first, "dtype": args.dtype}, cache / "job_ours.json")
        rows["ours"].append(r)
        print(f"  ours     run {repeat + 1}: {run_line(r)}", flush=True)
        if problem:
            continue
        first = {"logits": logits["upstream"]} if repeat == 0 else {}
        try:
            r = run_upstream({**job, **first}, cache / "job_upstream.json", args.upstream, args.upstream_python)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            problem = f"its run failed: {exc}"
            print(f"upstream not run: {problem}; reporting ours alone", flush=True)
            continue
        rows["upstream"].append(r)
        print(f"  upstream run {repeat + 1}: {run_line(r)}", flush=True)
    print(f"device: {machine()}")
    sides = [s for s in rows if rows[s]]
    print("prompt tokens: " + ", ".join(f"{s} {rows[s][0]['prompt_tokens']}" for s in sides))
    if rows["upstream"]:
        value, same_argmax = cosine(logits["ours"], logits["upstream"])
        print(
            f"same weights and input: first-token logits cosine {value:.5f}, "
            f"argmax {'agrees' if same_argmax else 'differs'} (ours {args.dtype}, upstream bfloat16)"
        )
    for line in summary_lines({s: rows[s] for s in sides}):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
