"""A decode step with the KV cache's keys row-major against keys in transposed blocks, in one process.

Run from the repository root::

    python -m benchmarks.bench_kv_layout [--batches 1,4] [--repeats 8] [--prompt-len 1799] [--new-tokens 17]

Why: on a CPU in bfloat16 the cache keeps its keys in blocks of 16 positions, each block stored
[dim, 16] (``language.key_block``), so that the compiled decode attention computes 16 scores at
once instead of summing each key's product across a vector. This builds the full-size language
model once (``bench_full_size.build_runtime``: deepseek-vl2-tiny, random weights, bfloat16) and
decodes the same prompts (token embeddings of random ids: a step costs the same whatever the
prompt held) with either layout, the two interleaved ``--repeats`` times per batch size; it
prints ms per decoded token (min and median) and the ratio, and how far the logits of the first
token decoded over the cache lie apart (the float32 sums run in another order).
Needs the compiled decode kernels (a C++ compiler; ``LLM_CAPTION_COMPILE`` not 0).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from benchmarks.bench_full_size import build_runtime
from benchmarks.common import machine
from videocaption.deepseek_vl2 import decode_kernels, generation, language
from videocaption.deepseek_vl2.threads import run_on_model_thread


@torch.inference_mode()
def decode(lm, rows: int, prompt_len: int, new_tokens: int, blocked: bool, scores: bool = False):
    """One generate call of ``rows`` random prompts with the chosen key layout: the output."""
    generation.key_block = language.key_block if blocked else lambda *_: 0
    ids = torch.randint(lm.config.vocab_size, (rows, prompt_len), generator=torch.Generator().manual_seed(rows))
    mask = torch.ones(rows, prompt_len, dtype=torch.bool)
    return generation.generate(
        lm, lm.model.embed_tokens(ids), mask, max_new_tokens=new_tokens, eos_token_id=-1, output_scores=scores
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=1799, help="4 frames of the sample clip: 1,799 tokens")
    parser.add_argument("--new-tokens", type=int, default=17)
    args = parser.parse_args()
    if not decode_kernels.available():
        raise SystemExit("the compiled decode kernels are off or cannot compile here: keys stay row-major")
    lm = build_runtime("cpu", "bfloat16", weights=True).model.language
    print(
        f"machine: {machine()}; load {os.getloadavg()[0]:.2f}; deepseek-vl2-tiny language model, random weights, bfloat16"
    )
    # the second token's logits: the first computed over the cache (the first comes from the prompt)
    second = [
        run_on_model_thread(decode, lm, 1, args.prompt_len, 3, blocked, True).scores[1] for blocked in (False, True)
    ]
    print(
        f"second token's logits, row-major against blocked keys: largest difference {(second[0] - second[1]).abs().max():.4f}"
    )
    batches = [int(b) for b in args.batches.split(",")]
    ms: dict[tuple[int, bool], list[float]] = {(rows, blocked): [] for rows in batches for blocked in (False, True)}
    for rows in batches:  # untimed: compiles each batch size's kernels
        run_on_model_thread(decode, lm, rows, args.prompt_len, 2, True)
    for _ in range(args.repeats):
        for rows in batches:
            for blocked in (False, True):
                out = run_on_model_thread(decode, lm, rows, args.prompt_len, args.new_tokens, blocked)
                ms[rows, blocked].append(out.decode_s / (args.new_tokens - 1) * 1000)
    print(
        f"{'rows':>4} {'row-major min':>13} {'median':>7} {'blocked min':>11} {'median':>7} {'ratio min':>9} {'median':>7}"
    )
    for rows in batches:
        plain, blocked = ms[rows, False], ms[rows, True]
        print(
            f"{rows:>4} {min(plain):>13.1f} {statistics.median(plain):>7.1f} {min(blocked):>11.1f} "
            f"{statistics.median(blocked):>7.1f} {min(plain) / min(blocked):>8.2f}x "
            f"{statistics.median(plain) / statistics.median(blocked):>6.2f}x"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
