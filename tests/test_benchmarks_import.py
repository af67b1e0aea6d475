"""Every benchmark still imports: they are not run by the suite, so a renamed name they use would
otherwise only show when someone reruns a figure (bench_limits once imported a moved constant)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

BENCHMARKS = sorted(p.stem for p in (Path(__file__).parent.parent / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__doc__, f"benchmarks/{name}.py says what it measures and how to run it"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="packed linears need oneDNN")
def test_bench_limits_counts_packed_linears_like_plain_ones():
    # A FlopCounterMode mapping keyed by an overload (not the packet) is silently never used:
    # the packed model then counted 537 of its 5,332 vision GFLOP.
    from benchmarks.bench_limits import flops
    from videocaption.deepseek_vl2.packing import PackedLinear

    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(10, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert flops(lambda: PackedLinear(linear)(x))[0] == flops(lambda: linear(x))[0] == 2 * 10 * 64 * 32
