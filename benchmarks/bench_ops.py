"""Torch operators and host reads per decode step of the deepseek-vl2-tiny decoder layout.

Run from the repository root::

    python -m benchmarks.bench_ops [--batches 1,4] [--steps 8]

Why: a decode step does little arithmetic per operator, so on a CPU the per-operator overhead
(dispatch, one OpenMP region each) and on a GPU the launches and host syncs set its speed. The
number of operators does not depend on the tensor sizes, so this builds the official layer
layout (12 layers, the first dense, 64 routed experts of which 6 per token, 2 shared, 10 heads)
at a tiny width and counts, with a ``TorchDispatchMode``, the aten operators of each decoded
token, and separately the reads that copy a value to the host (``item``, ``tolist``,
``__bool__``, ``nonzero`` ...: each a device sync on a GPU). Load on the machine changes nothing.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from videocaption.deepseek_vl2 import LanguageConfig, generate
from videocaption.deepseek_vl2.language import DeepseekV2ForCausalLM

LAYOUT = dict(
    vocab_size=512,
    hidden_size=40,
    intermediate_size=64,
    moe_intermediate_size=16,
    num_hidden_layers=12,
    num_attention_heads=10,
    num_key_value_heads=10,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    first_k_dense_replace=1,
    topk_method="greedy",
    use_mla=False,
    kv_lora_rank=None,
    q_lora_rank=None,
    max_position_embeddings=4096,
)
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count(lm: DeepseekV2ForCausalLM, batch: int, steps: int) -> tuple[int, int]:
    """(aten operators, host reads) of a generate call with ``steps`` new tokens."""
    x = torch.randn(batch, 32, lm.config.hidden_size)
    mask = torch.ones(batch, 32, dtype=torch.bool)
    reads = [0]
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(original):
        def wrapper(self, *args, **kwargs):
            reads[0] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        with torch.inference_mode(), Count() as ops:
            generate(lm, x, mask, max_new_tokens=steps, eos_token_id=-1)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return ops.ops, reads[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = DeepseekV2ForCausalLM(LanguageConfig(**LAYOUT)).eval()
    print(f"{'batch':>5} {'aten ops / token':>16} {'host reads / token':>18}")
    for batch in map(int, args.batches.split(",")):
        ops_short, reads_short = count(lm, batch, 2)
        ops_long, reads_long = count(lm, batch, 2 + args.steps)
        print(
            f"{batch:>5} {(ops_long - ops_short) / args.steps:>16.1f} {(reads_long - reads_short) / args.steps:>18.1f}"
        )


if __name__ == "__main__":
    main()
