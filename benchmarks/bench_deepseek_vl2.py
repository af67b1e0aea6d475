"""Prefill and decode throughput of the DeepSeek-VL2 runtime: one batched call vs one by one.

Run from the repository root::

    python -m benchmarks.bench_deepseek_vl2 [--model DIR] [--device cpu] [--dtype float32]
                                            [--new-tokens 32] [--repeats 3]

Defaults to the tiny reference checkpoint (tests/fixtures/deepseek_vl2_reference/model) on CPU.
Four conversations with different frames and prompts are answered twice per repeat: as one
left-padded batch and one conversation at a time. Per mode it times the processor (PIL tiling and
tokenization), prefill (vision + projector + embedding merge + language forward over the prompt
up to the first token's logits) and decode (every further token, as timed inside ``generate``),
after a burn-in of each mode.
Decoding ignores eos so that every row makes exactly ``--new-tokens`` tokens. Prompt throughput
counts real tokens only (the batch also computes its padding: that is part of its cost).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from videocaption.deepseek_vl2 import DeepseekVL2, generate

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "deepseek_vl2_reference"


def requests() -> list[tuple[list[Image.Image], str]]:
    def frame(name: str) -> Image.Image:
        return Image.open(FIXTURES / "cases" / name).convert("RGB")

    return [
        ([frame("bunny_t1.0_640x360.png")], "<image>\nDescribe this frame of the video in one sentence."),
        ([frame("bikes_t4.5_640x272.png")], "<image>\nDescribe the scene."),
        (
            [frame("bunny_t4.2_320x180.png"), frame("bikes_t7.5_320x136.png")],
            "<image>\n<image>\nWhich frame shows the rabbit?",
        ),
        ([frame("bunny_t2.6_crop5x4_700x560.png")], "<image>\nWhat is the animal doing?"),
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def run_group(runtime: DeepseekVL2, group, new_tokens: int) -> dict[str, float]:
    """Times of one generate call (batch = ``group``): processor, prefill, decode; token counts."""
    device = runtime.device
    t0 = time.perf_counter()
    batch = runtime._batch(group)
    t1 = time.perf_counter()
    with torch.inference_mode():
        batch = batch.to(device, dtype=runtime.dtype)
        embeds = runtime.model.prepare_inputs_embeds(
            batch.input_ids, batch.images, batch.images_seq_mask, batch.images_spatial_crop
        )
        sync(device)
        t2 = time.perf_counter()
        out = generate(runtime.model.language, embeds, batch.attention_mask, max_new_tokens=new_tokens, eos_token_id=-1)
    assert out.sequences.shape == (len(group), new_tokens)
    return {
        "processor_s": t1 - t0,
        "prefill_s": (t2 - t1) + out.prefill_s,  # vision + projector + merge, then the language forward
        "decode_s": out.decode_s,
        "prompt_tokens": sum(batch.seq_lens),
        "padded_tokens": batch.input_ids.numel(),
        "decode_tokens": len(group) * (new_tokens - 1),
    }


def run_mode(runtime: DeepseekVL2, reqs, batched: bool, new_tokens: int) -> dict[str, float]:
    groups = [reqs] if batched else [[r] for r in reqs]
    parts = [run_group(runtime, g, new_tokens) for g in groups]
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def median_run(runtime, reqs, batched: bool, new_tokens: int, repeats: int) -> dict[str, float]:
    runs = [run_mode(runtime, reqs, batched, new_tokens) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(FIXTURES / "model"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    runtime = DeepseekVL2.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    reqs = requests()
    print(f"model {runtime.name}  device {runtime.device}  dtype {runtime.dtype}  threads {torch.get_num_threads()}")
    print(f"{len(reqs)} conversations, {args.new_tokens} new tokens each, median of {args.repeats} after burn-in")

    for batched in (True, False):  # burn-in: allocator, kernels, PIL caches
        run_mode(runtime, reqs, batched, args.new_tokens)
    results = {
        "batched": median_run(runtime, reqs, True, args.new_tokens, args.repeats),
        "one-by-one": median_run(runtime, reqs, False, args.new_tokens, args.repeats),
    }

    header = f"{'mode':<11} {'prompt tok':>10} {'computed':>9} {'processor s':>11} {'prefill s':>9} {'prefill tok/s':>13} {'decode s':>8} {'decode tok/s':>12} {'total s':>8}"
    print(header)
    for mode, r in results.items():
        total = r["processor_s"] + r["prefill_s"] + r["decode_s"]
        r["prefill_tps"] = r["prompt_tokens"] / r["prefill_s"]
        r["decode_tps"] = r["decode_tokens"] / r["decode_s"] if r["decode_s"] > 0 else float("nan")
        r["total_s"] = total
        print(
            f"{mode:<11} {r['prompt_tokens']:>10.0f} {r['padded_tokens']:>9.0f} {r['processor_s']:>11.3f} "
            f"{r['prefill_s']:>9.3f} {r['prefill_tps']:>13.0f} {r['decode_s']:>8.3f} {r['decode_tps']:>12.1f} {total:>8.3f}"
        )
    b, s = results["batched"], results["one-by-one"]
    print(
        f"batched / one-by-one: prefill tok/s x{b['prefill_tps'] / s['prefill_tps']:.2f}, "
        f"decode tok/s x{b['decode_tps'] / s['decode_tps']:.2f}, wall time x{b['total_s'] / s['total_s']:.2f}"
    )


if __name__ == "__main__":
    main()
