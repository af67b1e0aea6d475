"""Optional weight-only int8 for the language model on CPU (``dtype="int8"``; off by default).

Why: decoding reads every dense weight and the chosen experts once per token, so its speed is
memory bandwidth; int8 weights halve the bytes. Each output channel gets one symmetric scale
(``max |w| / 127``); activations stay bfloat16. A few rows (a decode step) go through torch's
``_weight_int8pack_mm`` CPU kernel, which reads the int8 weight directly; many rows (a prompt)
dequantize the weight to bfloat16 and run the ordinary GEMM, where the arithmetic, not the weight
read, is the cost.

Quantized: every ``nn.Linear`` of the decoder (attention, dense MLP, shared experts) and
``lm_head``, and the stacked routed experts. Kept in bfloat16: MLA's ``kv_b_proj`` (absorbed into
the attention as a matrix), the router (``MoEGate``, float32
scores decide the experts), norms, embeddings, the vision tower and projector (compute-bound:
weight-only int8 cannot speed them up). The effect on the reference fixtures is measured by
``python -m benchmarks.bench_int8`` and written up in docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .language import DeepseekV2ForCausalLM, Experts
from .weights import replace_submodules

SMALL_BATCH = 16  # rows up to which the int8 kernel beats dequantize + bf16 GEMM


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., out, in] float -> int8 of the same shape and float scales [..., out] (symmetric, per row).

    ``detach`` matters: the weights still require grad while a model loads, and the scales' autograd
    graph would keep a float32 copy of every weight alive (16 GB and counting for the real model).
    """
    w = weight.detach().float()
    scales = (w.abs().amax(dim=-1) / 127).clamp_min(1e-12)
    return (w / scales.unsqueeze(-1)).round().clamp(-127, 127).to(torch.int8), scales


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N, in] (bfloat16) times int8 [out, in] with scales [out] (x's dtype) -> [N, out]."""
    if x.shape[0] <= SMALL_BATCH:
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), weight, scales)
    return F.linear(x, weight.to(x.dtype) * scales.unsqueeze(-1))


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight and per-output-channel scales."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        weight, scales = quantize_rows(linear.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales.to(dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul(x.reshape(-1, x.shape[-1]), self.weight, self.scales).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class Int8Experts(nn.Module):
    """:class:`Experts` with int8 stacked weights; the same ``forward(x, ends)``.

    There is no grouped int8 kernel, so the groups run one by one and their ends are read on the
    host: free on a CPU, the only device this option is for.
    """

    def __init__(self, experts: Experts, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_experts, self.intermediate_size, self.act_fn = (
            experts.num_experts,
            experts.intermediate_size,
            experts.act_fn,
        )
        gate_up, gate_up_scales = quantize_rows(experts.gate_up_proj)
        down, down_scales = quantize_rows(experts.down_proj)
        self.register_buffer("gate_up_proj", gate_up)
        self.register_buffer("gate_up_scales", gate_up_scales.to(dtype))
        self.register_buffer("down_proj", down)
        self.register_buffer("down_scales", down_scales.to(dtype))

    def forward(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        out, start = x.new_empty(x.shape), 0
        for e, end in enumerate(ends.tolist()):
            if end > start:
                gate, up = int8_matmul(x[start:end], self.gate_up_proj[e], self.gate_up_scales[e]).chunk(2, dim=-1)
                out[start:end] = int8_matmul(self.act_fn(gate) * up, self.down_proj[e], self.down_scales[e])
            start = end
        return out


def quantize_language_int8(language: DeepseekV2ForCausalLM, dtype: torch.dtype = torch.bfloat16) -> None:
    """Replace the decoder's linears, ``lm_head`` and routed experts by int8 versions, in place.

    One module at a time, so the process never holds more than one extra layer's worth of weights.
    """
    if next(language.parameters()).device.type != "cpu":
        raise ValueError("int8 weights are a CPU option (torch's int8 weight-only kernel is the CPU one)")
    if language.config.tie_word_embeddings:
        raise ValueError("int8 needs an untied lm_head (it would quantize the embedding table too)")
    quantize_modules_int8(language, dtype)


def quantize_modules_int8(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """Replace every ``nn.Linear`` (but MLA's ``kv_b_proj``) and ``Experts`` inside ``module``, in place."""

    def convert(name: str, child: nn.Module) -> nn.Module | None:
        if isinstance(child, Experts):
            return Int8Experts(child, dtype)
        if isinstance(child, nn.Linear) and name != "kv_b_proj":  # MLA reads kv_b_proj's weight itself
            return Int8Linear(child, dtype)
        return None

    replace_submodules(module, convert)
