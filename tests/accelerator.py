"""Where the DeepSeek-VL2 numerics tests run: CPU in float32 unless told otherwise.

The parity, batching and language tests read ``LLM_CAPTION_TEST_DEVICE`` (``cpu``, ``cuda``,
``cuda:N``, ``mps``) and ``LLM_CAPTION_TEST_DTYPE`` (``float32``, ``bfloat16``), so the same
tests check a GPU (``python -m benchmarks.gpu_check`` sets both)::

    LLM_CAPTION_TEST_DEVICE=cuda LLM_CAPTION_TEST_DTYPE=bfloat16 python -m pytest tests/test_deepseek_vl2_parity.py

In float32 every tolerance is the test's own (float32 rounding noise). In bfloat16 (8 bits of
mantissa) whole tensors are compared by relative error, and greedy ids, which flip on
near-ties, are compared only in float32.
"""

from __future__ import annotations

import os

import torch

DEVICE = torch.device(os.environ.get("LLM_CAPTION_TEST_DEVICE", "cpu"))
DTYPE: torch.dtype = getattr(torch, os.environ.get("LLM_CAPTION_TEST_DTYPE", "float32"))
EXACT = DTYPE == torch.float32  # float32: ids equal and float32 tolerances
# bfloat16: the relative error allowed over a whole tensor (see assert_close)
BF16_RELATIVE = float(os.environ.get("LLM_CAPTION_TEST_BF16_RELATIVE", 0.05))

if DEVICE.type == "cuda":
    # float32 means float32: no TensorFloat-32 in matmuls or convolutions (cuDNN's default is on).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def max_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference, both compared in float32 on the CPU."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    if not ours.numel():
        return 0.0
    return (ours.detach().float().cpu() - reference.detach().float().cpu()).abs().max().item()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``|ours - reference| / |reference|`` over the whole tensor (Frobenius norms)."""
    ours, reference = ours.detach().float().cpu(), reference.detach().float().cpu()
    return ((ours - reference).norm() / reference.norm().clamp_min(1e-12)).item()


def assert_close(ours: torch.Tensor, reference: torch.Tensor, float32_tol: float, what: str = "") -> None:
    """Within ``float32_tol`` everywhere in float32. In bfloat16, within :data:`BF16_RELATIVE` as a
    whole: a router that picks another expert on a near-tie changes a few tokens a lot, and
    those must not fail a check of the arithmetic."""
    if EXACT:
        diff = max_diff(ours, reference)
        assert diff < float32_tol, f"{what}: max difference {diff:.3g} >= {float32_tol:.3g} ({DTYPE} on {DEVICE})"
    else:
        assert ours.shape == reference.shape, (ours.shape, reference.shape)
        error = relative_error(ours, reference)
        assert error < BF16_RELATIVE, f"{what}: relative error {error:.3g} >= {BF16_RELATIVE} ({DTYPE} on {DEVICE})"
