"""One full-size MoE layer: the stacked grouped experts against the per-expert loop, and int8.

Run from the repository root::

    python -m benchmarks.bench_moe [--tokens 1,4,1695] [--repeats 7]

Why: the MoE layers are most of the language model's weights and most of a decode step's reads.
This times one deepseek-vl2-tiny MoE layer (64 routed experts of 896, 6 per token, 2 shared;
hidden 1280; random weights, bfloat16) at decode and prefill token counts, three ways,
interleaved so that load on the machine hits all alike: ``loop`` (the earlier code: the token
count of every expert read on the host, one small MLP per expert), ``grouped`` (the runtime:
``Experts`` with ``torch._grouped_mm``), and ``int8`` (``dtype="int8"``'s ``Int8Experts`` and
``Int8Linear`` shared experts). New routing (new token counts per expert) every call, as in real
use, so cold GEMM shapes are paid where they are paid. Prints min and median ms per layer.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.bench_full_size import official_config
from benchmarks.common import machine
from videocaption.deepseek_vl2.language import MoE
from videocaption.deepseek_vl2.quantize import quantize_modules_int8
from videocaption.deepseek_vl2.threads import run_on_model_thread


def loop_route(moe: MoE, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The earlier MoE.route: per-expert Python loop with the counts read on the host."""
    n, k = idx.shape
    flat_idx = idx.reshape(-1)
    order = flat_idx.argsort(stable=True)
    token_of = order // k
    counts = torch.bincount(flat_idx, minlength=moe.experts.num_experts).tolist()
    tokens = x.index_select(0, token_of)
    weights = weight.reshape(-1).index_select(0, order).unsqueeze(-1)
    out = torch.zeros(n, x.shape[-1], dtype=torch.float32)
    start = 0
    for e, count in enumerate(counts):
        if count:
            rows = slice(start, start + count)
            gate, up = moe.experts.gate_up_proj[e].split(moe.experts.intermediate_size)
            h = F.linear(
                moe.experts.act_fn(F.linear(tokens[rows], gate)) * F.linear(tokens[rows], up), moe.experts.down_proj[e]
            )
            out.index_add_(0, token_of[rows], h.float() * weights[rows])
            start += count
    return out.to(x.dtype)


def loop_forward(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    idx, weight = moe.gate(flat)
    return loop_route(moe, flat, idx, weight).view(x.shape) + moe.shared_experts(x)


@torch.inference_mode()
def measure(tokens: list[int], repeats: int) -> None:
    config = official_config().language
    torch.manual_seed(0)
    moe = MoE(config).to(torch.bfloat16)
    for p in moe.parameters():
        p.data.normal_(0.0, 0.02)
    int8 = copy.deepcopy(moe)
    quantize_modules_int8(int8)
    variants = {"loop": lambda x: loop_forward(moe, x), "grouped": moe, "int8": int8}
    x0 = torch.randn(1, max(tokens), config.hidden_size, dtype=torch.bfloat16)
    ref = moe(x0[:, :8])
    for name, fn in variants.items():
        print(f"{name:>8}: max |diff| vs grouped on 8 tokens {(fn(x0[:, :8]) - ref).abs().max().item():.4f}")
    print(f"{'tokens':>7} " + " ".join(f"{n + ' min':>12} {n + ' median':>13}" for n in variants) + "  (ms / layer)")
    for n in tokens:
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            x = torch.randn(1, n, config.hidden_size, dtype=torch.bfloat16)  # new routing each repeat
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - start) * 1000)
        print(f"{n:>7} " + " ".join(f"{min(t):>12.2f} {statistics.median(t):>13.2f}" for t in times.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1,4,1695")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    run_on_model_thread(measure, [int(t) for t in args.tokens.split(",")], args.repeats)


if __name__ == "__main__":
    main()
