"""Decode-step kernels that TorchInductor generates for the CPU: the chosen experts of a few tokens.

Why: in a decode step each MoE layer runs the six experts its token chose. As packed oneDNN
linears that is twelve calls a layer, 132 a step, each paying ~20 us besides its read, and small
expert weights read well below the machine's bandwidth. Written as a gather and two reductions
over the stacked weights, inductor turns the whole layer into a few C++ loop nests that read each
chosen expert's rows straight out of the stack (no gathered copy is made) at about the memory
bandwidth: the eleven MoE layers' experts of one token took 16 ms against 26 ms packed, four
tokens 55 against 80 ms (2-core Zen 4 VM reading 29-33 GB/s; docs/performance.md).

The same goes for a decode step's attention over a bfloat16 KV cache (:func:`one_query_attention`),
which eager torch can only read as a float32 copy: the cache is read at half the bytes and held in
half the memory. For plain multi-head attention the cache keeps its keys in transposed blocks of
:data:`KEY_BLOCK` positions (:func:`blocked_query_attention`, ``language.key_block``).

They are used by default in bfloat16 on a CPU; ``LLM_CAPTION_COMPILE=0`` turns them off. The
kernels are compiled at load (about 30 s the first time on a machine, then a few seconds from
inductor's cache on disk) and need a C++ compiler and Python's headers. :func:`compiler_works`
tries them once on tiny inputs: where that fails (no compiler, an unsupported platform), or with
the variable at 0, the runtime keeps the packed per-expert layout and a float32 cache
(``language.cache_dtype``). A kernel that fails to compile later, at a size met only in a run,
falls back to its eager formula with a warning (:class:`Kernel`) rather than stopping the run.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Up to this many tokens a MoE layer hands to its experts' ``few_tokens`` kernel where they have one
# (packing.KernelExperts: a decode step of up to this many rows); a prompt runs its GEMMs.
FEW_TOKENS = 8


def chosen_experts(
    x: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Weighted sum of the chosen experts' outputs for [N, hidden] tokens.

    ``idx`` / ``weight`` [N, k]: each token's experts and float32 weights; ``gate_up`` [E, 2I,
    hidden] and ``down`` [E, hidden, I]: the stacked weights (:class:`~.language.Experts`).
    Each (token, expert) pair is one row-times-matrix product accumulated in float32, rounded as
    the linears round (bfloat16 after each product); pairs are sorted by expert, so an expert two
    tokens chose is read from memory once and from cache the second time.
    """
    n, k = idx.shape
    pairs = idx.reshape(-1)
    order = pairs.argsort(stable=True)
    experts, token = pairs[order], order // k
    rows = x[token]  # [P, hidden]
    hidden = (gate_up[experts].float() * rows[:, None, :].float()).sum(-1).to(x.dtype)  # [P, 2I]
    gate, up = hidden.chunk(2, dim=-1)
    inner = (act(gate) * up).to(x.dtype)
    y = (down[experts].float() * inner[:, None, :].float()).sum(-1).to(x.dtype)  # [P, hidden]
    out = torch.zeros(n, x.shape[-1], dtype=torch.float32, device=x.device)
    return out.index_add_(0, token, y.float() * weight.reshape(-1)[order, None]).to(x.dtype)


class Kernel:
    """``fn`` compiled by TorchInductor, or ``fn`` itself for good once compiling it failed.

    Compiled with inductor's C++ wrapper, which releases the GIL for the whole call. Why: with the
    default Python wrapper each generated kernel runs with the GIL held (a plain CPython binding),
    where torch's own operators release it; inside the pipeline, with BMF's Python threads beside
    the model, the model's calls then ran 9-15% slower than the same calls alone, and about as
    fast as alone with the C++ wrapper (docs/performance.md). It also skips the Python wrapper's
    per-call work.
    """

    def __init__(self, fn: Callable) -> None:
        self.eager = fn
        self.compiled = torch.compile(fn, dynamic=True, options={"cpp_wrapper": True})
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - a size the compiler cannot handle: the eager formula
                self.failed = True
                log.warning("compiled %s failed (%s); it runs eager from now on", self.eager.__name__, _summary(exc))
        return self.eager(*args)


def _summary(exc: Exception) -> str:
    """The exception's type and first line: a compiler's error carries pages of build output."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}"


compiled_chosen_experts = Kernel(chosen_experts)


def one_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, H, t, D] queries of a decode step over a [B, H, L, D] cache.

    The cache may be bfloat16: each key and value is widened in registers, the sums are float32,
    so the cache is read once at its own width (a float32 copy per layer and step is what the
    eager formula needs; see ``language.cache_dtype``). ``mask`` [B, 1, t, L] is True where to attend.
    """
    scores = (q.float().unsqueeze(3) * (k.float() * scale).unsqueeze(2)).sum(-1)  # [B, H, t, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return (probs.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2).to(q.dtype)  # [B, H, t, D]


compiled_one_query_attention = Kernel(one_query_attention)

# Positions per block of a bfloat16 KV cache's keys for blocked_query_attention (language.key_block).
KEY_BLOCK = 16


def blocked_query_attention(
    q: torch.Tensor, key_blocks: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`one_query_attention` over keys stored in transposed blocks (``KVCache.blocked``).

    ``key_blocks`` [B, H, n, D, block] holds position ``i`` at ``[..., i // block, :, i % block]``;
    ``v`` is [B, H, n * block, D] and ``mask`` [B, 1, t, n * block] (True where to attend) covers
    whole blocks. The scores' sum over D then runs down a block's columns with one vector lane per
    position, where row-major keys need a sum across each key's vector (``language.key_block``).
    """
    b, h, blocks, d, block = key_blocks.shape
    t = q.shape[2]
    # [B, H, t, 1, D, 1] x [B, H, 1, n, D, block] summed over D -> [B, H, t, n, block]
    scores = (q.float()[:, :, :, None, :, None] * (key_blocks.float() * scale)[:, :, None]).sum(-2)
    scores = scores.reshape(b, h, t, blocks * block).masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return (probs.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2).to(q.dtype)  # [B, H, t, D]


compiled_blocked_query_attention = Kernel(blocked_query_attention)


@functools.cache  # read once a process: it is asked at every layer of every step
def available() -> bool:
    """Whether decoding uses the compiled kernels: not turned off (``LLM_CAPTION_COMPILE=0``) and
    they compile here (:func:`compiler_works`)."""
    return os.environ.get("LLM_CAPTION_COMPILE", "1") != "0" and compiler_works()


@functools.cache
def compiler_works() -> bool:
    """Whether the kernels compile and compute here: tried once per process on tiny bfloat16 inputs.

    The tries cover the shapes a decode step's attention has (one row or several, a padded
    batch's mask, a cache slice of a longer buffer); its sizes are dynamic, so a model's first
    step then finds it compiled instead of stopping for the compiler.
    """
    log.info("compiling the CPU decode kernels (TorchInductor; cached on disk after the first time)")
    with torch.inference_mode():  # as generate calls them (guards tell inference tensors apart)
        tries = _tries()
        try:
            got = [kernel.compiled(*args) for _, kernel, args in tries]
        except Exception as exc:  # noqa: BLE001 - any failure to compile means: keep the eager layouts
            log.warning("compiled decode kernels unavailable (%s); decoding runs eager", _summary(exc))
            return False
        expected = [eager(*args) for eager, _, args in tries]
    # bfloat16 results summed in another order: a few rounding steps of the largest value apart
    agree = all((a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max() for a, b in zip(got, expected))
    if not agree:
        log.warning("compiled decode kernels disagree with their formulas here; decoding runs eager")
    return agree


def _tries() -> list[tuple[Callable, Kernel, tuple]]:
    """(eager, kernel, arguments) on tiny bfloat16 inputs shaped like a decode step's.

    Every size differs from every other (the compiler would otherwise assume, and check, that two
    equal sizes always are). The experts' try only checks that the kernel compiles and computes:
    a model's weights are parameters, whose sizes are compiled in (``KernelExperts.warm_up``).
    """
    from .language import KVCache  # which imports this module

    generator = torch.Generator().manual_seed(0)
    tiny = lambda *shape: torch.randn(*shape, generator=generator).mul(0.3).to(torch.bfloat16)  # noqa: E731
    with torch.inference_mode(False):  # weights, loaded outside inference mode; the rest is made inside
        gate_up, down = tiny(5, 16, 24), tiny(5, 24, 8)
    tries = []
    idx = torch.tensor([[0, 2], [2, 3], [4, 1]])
    weight = torch.rand(idx.shape, generator=generator)
    tries.append((chosen_experts, compiled_chosen_experts, (tiny(3, 24), idx, weight, gate_up, down, F.silu)))
    for rows, padded in ((1, False), (2, False), (2, True)):
        keys, values = tiny(rows, 3, 11, 8)[:, :, :5], tiny(rows, 3, 11, 8)[:, :, :5]  # a cache's first 5 positions
        mask = torch.tensor([[True] * 5, [False] + [True] * 4])[:, None, None, :] if padded else None
        tries.append(
            (one_query_attention, compiled_one_query_attention, (tiny(rows, 3, 1, 8), keys, values, mask, 0.5))
        )
    for rows, padded in ((1, False), (2, True)):
        cache = KVCache(capacity=70, dtype=torch.bfloat16, key_block=KEY_BLOCK)  # 4 of its 6 blocks read
        cache.append(0, tiny(rows, 3, 50, 8), tiny(rows, 3, 50, 8))
        mask = torch.tensor([[True] * 50, [False] + [True] * 49])[:rows, None, None, :] if padded else None
        keys, values, widened = cache.blocked(0, mask)
        tries.append(
            (
                blocked_query_attention,
                compiled_blocked_query_attention,
                (tiny(rows, 3, 1, 8), keys, values, widened, 0.5),
            )
        )
    return tries
