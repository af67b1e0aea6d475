"""bfloat16 weights on CPU kept in oneDNN's own layout, packed once at load time.

Why: ``F.linear`` on CPU hands oneDNN a plain row-major weight, which it reorders into its blocked
layout on every call. For a prompt that cost hides behind the arithmetic; for a decode step (one
row per conversation) the weight is read twice, and reading weights is all a decode step does. On
the development machine (2-core EPYC, AVX512-BF16, idle) one row through ``lm_head`` took 20 ms
plain and 13 ms packed, and the six chosen experts of all eleven MoE layers 38 ms through
``torch._grouped_mm`` and 21 ms as packed linears; at 1,800 rows packed is a little faster too.
The results are bit-identical to ``F.linear`` (same kernel, weight already in place).

Packed in the language model: every ``nn.Linear`` (but MLA's ``kv_b_proj``, whose weight the
attention reads as a matrix, and a ``lm_head`` tied to the embeddings), and the routed experts, one
packed weight per expert, where the compiled decode kernels cannot run (below); attention's q, k
and v, and a dense MLP's gate and up, each as one weight (:class:`FusedPackedLinear`). In the vision tower: each block's MLP, with the tanh GELU
fused into ``fc1`` as a oneDNN post-op (applied to the float32 accumulator, before rounding to bfloat16), and
its attention's linears. The vision tower is compute-bound (729 rows a tile): packing alone ran it
4% slower, but the fused GELU saves the separate pass over the [tokens, 4,304] activation (48 ms
of 216 for ``fc1`` + GELU on 8 tiles, a layer): 8 tiles took 18.4 s against 21.1 s (idle, min of
3; docs/performance.md). The projector's two small linears are left as they are. The packed
tensors are buffers named as before, so counting bytes still works, and ``state_dict`` gives the
checkpoint's dense tensors back (``to_dense``). Only for bfloat16 on a CPU whose oneDNN has bf16
kernels; float32 packed was slower for one row, and on GPUs cuBLAS takes the plain layout.

The routed experts are the exception where inductor compiles here (``decode_kernels.available``):
they stay stacked and unpacked (:class:`KernelExperts`), since a decode step's chosen experts then
run as one compiled kernel that reads them at the memory's speed, which no packed per-expert call
does. Otherwise each expert is packed (:class:`PackedExperts`). Either way a prompt's experts run
one by one with their group ends read on the host (one read per MoE layer): free on a CPU, the
only device this is for; the grouped, sync-free path stays the one GPUs use (``language.Experts``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import decode_kernels
from .language import MLP, Experts, MultiHeadAttention, looped_mm
from .vision import Mlp
from .weights import replace_submodules

# Activations oneDNN can apply inside a linear: name -> (post-op, its algorithm).
FUSED_ACTIVATIONS = {None: ("none", ""), "gelu_tanh": ("gelu", "tanh")}


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`pack_for_cpu` applies: bfloat16 on a CPU with oneDNN bf16 kernels."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A dense [out, in] weight in oneDNN's layout for linears (any number of rows)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)


def packed_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """``F.linear`` with a :func:`pack_weight` weight; ``x`` [..., in]; ``activation`` fused (see
    ``FUSED_ACTIVATIONS``)."""
    post_op, algorithm = FUSED_ACTIVATIONS[activation]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)


class PackedLinear(nn.Module):
    """``nn.Linear`` whose weight is packed, optionally followed by a fused activation;
    ``state_dict`` holds the dense weight (checkpoint keys)."""

    def __init__(self, linear: nn.Linear, activation: str | None = None) -> None:
        super().__init__()
        if activation not in FUSED_ACTIVATIONS:
            raise ValueError(f"no fused activation {activation!r}; known: {sorted(filter(None, FUSED_ACTIVATIONS))}")
        self.in_features, self.out_features, self.activation = linear.in_features, linear.out_features, activation
        self.register_buffer("weight", pack_weight(linear.weight))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.weight, self.bias, self.activation)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight.to_dense()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()


class FusedPackedLinear(nn.Module):
    """Sibling linears of one input (attention's q, k, v; an MLP's gate and up) as one packed weight.

    Why: in a decode step each oneDNN call costs ~20 us besides reading its weight, and a wider
    weight reads faster: fused, a full-size decode step took 1-5% less (min) and 6-12% less
    (median) in two interleaved runs on the 2-core Zen 5 VM (docs/performance.md). ``forward`` returns each linear's output, in order. ``state_dict`` writes
    the siblings' own checkpoint keys beside this module (``q_proj.weight`` ..., not
    ``qkv_proj.q_proj.weight``), so the parent's keys are those of the checkpoint.
    """

    def __init__(self, attribute: str, linears: dict[str, nn.Linear]) -> None:
        super().__init__()
        self.attribute, self.names = attribute, list(linears)
        self.sizes = [linear.out_features for linear in linears.values()]
        self.register_buffer("weight", pack_weight(torch.cat([linear.weight for linear in linears.values()])))
        biases = [linear.bias for linear in linears.values()]
        self.bias = None if biases[0] is None else nn.Parameter(torch.cat(biases).detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return packed_linear(x, self.weight, self.bias).split(self.sizes, dim=-1)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        parent = prefix.removesuffix(f"{self.attribute}.")
        weights = self.weight.to_dense().split(self.sizes)
        biases = [None] * len(self.sizes) if self.bias is None else self.bias.detach().split(self.sizes)
        for name, weight, bias in zip(self.names, weights, biases):
            destination[f"{parent}{name}.weight"] = weight
            if bias is not None:
                destination[f"{parent}{name}.bias"] = bias


def fuse_siblings(parent: nn.Module, attribute: str, names: list[str]) -> None:
    """Replace ``parent``'s linears ``names`` by one :class:`FusedPackedLinear` at ``attribute``,
    where all of them are plain ``nn.Linear`` with or without bias alike (an int8 one stays apart)."""
    linears = {name: getattr(parent, name) for name in names}
    plain = all(type(linear) is nn.Linear for linear in linears.values())
    if not plain or len({linear.bias is None for linear in linears.values()}) > 1:
        return
    setattr(parent, attribute, FusedPackedLinear(attribute, linears))
    for name in names:
        delattr(parent, name)


class PackedExperts(nn.Module):
    """:class:`~.language.Experts` with one packed weight per expert; the same ``forward(x, ends)``."""

    def __init__(self, experts: Experts) -> None:
        super().__init__()
        self.num_experts, self.intermediate_size, self.act_fn = (
            experts.num_experts,
            experts.intermediate_size,
            experts.act_fn,
        )
        self.gate_up_proj = [pack_weight(w) for w in experts.gate_up_proj]
        self.down_proj = [pack_weight(w) for w in experts.down_proj]
        for e in range(self.num_experts):  # buffers, so that byte counts and ``named_buffers`` see them
            self.register_buffer(f"gate_up_proj_{e}", self.gate_up_proj[e], persistent=False)
            self.register_buffer(f"down_proj_{e}", self.down_proj[e], persistent=False)

    def forward(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        out, start = x.new_empty(x.shape), 0
        for e, end in enumerate(ends.tolist()):
            if end > start:
                gate, up = packed_linear(x[start:end], self.gate_up_proj[e]).chunk(2, dim=-1)
                out[start:end] = packed_linear(self.act_fn(gate) * up, self.down_proj[e])
            start = end
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for e in range(self.num_experts):  # the checkpoint's per-expert keys, dense
            gate, up = self.gate_up_proj[e].to_dense().split(self.intermediate_size)
            destination[f"{prefix}{e}.gate_proj.weight"] = gate
            destination[f"{prefix}{e}.up_proj.weight"] = up
            destination[f"{prefix}{e}.down_proj.weight"] = self.down_proj[e].to_dense()


class KernelExperts(Experts):
    """:class:`~.language.Experts` (the same stacked weights, the same checkpoint keys) whose calls
    for a few tokens run as :func:`.decode_kernels.chosen_experts`, compiled; a prompt runs expert by expert.

    Used on CPU in bfloat16 where :func:`.decode_kernels.available`, in place of the packed per-expert layout
    (:class:`PackedExperts`), which holds the same bytes in oneDNN's blocking: a prompt's expert
    GEMMs then reorder their weight at each call, 11% slower for one layer of a 1,800-token prompt
    (214 against 193 ms), which a decode step more than wins back.
    """

    def __init__(self, experts: Experts) -> None:
        nn.Module.__init__(self)  # not Experts.__init__: the existing stacked tensors are taken over
        self.num_experts, self.intermediate_size, self.act_fn = (
            experts.num_experts,
            experts.intermediate_size,
            experts.act_fn,
        )
        self.gate_up_proj, self.down_proj = experts.gate_up_proj, experts.down_proj

    def forward(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """A prompt's tokens sorted by expert (see ``Experts.forward``): one GEMM per expert and weight.

        ``language.looped_mm`` reads the group ends on the host, as the packed layout does (free on
        a CPU); ``torch._grouped_mm``'s CPU loop was 8% slower on these shapes.
        """
        gate, up = looped_mm(x, self.gate_up_proj, ends).chunk(2, dim=-1)
        return looped_mm(self.act_fn(gate) * up, self.down_proj, ends)

    def few_tokens(self, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """What ``MoE.route`` computes, for up to :data:`.decode_kernels.FEW_TOKENS` tokens, in one compiled kernel."""
        # The weights as parameters: their sizes are compiled in as constants, which made the kernel
        # 2.7x faster than with dynamic sizes (17.3 against 46.1 ms for eleven layers of one token).
        return decode_kernels.compiled_chosen_experts(x, idx, weight, self.gate_up_proj, self.down_proj, self.act_fn)

    def warm_up(self) -> None:
        """Compile the kernel for this model's sizes now (one row, and several), not in the first step."""
        hidden = self.gate_up_proj.shape[-1]
        with torch.inference_mode():
            for rows in (1, 3):
                idx = torch.arange(2 * rows).remainder(self.num_experts).view(rows, 2)
                x = torch.zeros(rows, hidden, dtype=self.gate_up_proj.dtype)
                self.few_tokens(x, idx, torch.ones(rows, 2))


class PackedGeluMlp(nn.Module):
    """The vision tower's :class:`~.vision.Mlp` packed: ``fc2(gelu_tanh(fc1(x)))``, the GELU fused
    into ``fc1``; the same ``fc1.*`` / ``fc2.*`` checkpoint keys."""

    def __init__(self, mlp: Mlp) -> None:
        super().__init__()
        self.fc1 = PackedLinear(mlp.fc1, activation="gelu_tanh")
        self.fc2 = PackedLinear(mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def pack_for_cpu(module: nn.Module) -> None:
    """Pack a language model or a vision tower in place (see the module docstring for what is kept).

    One module at a time, so the process holds at most one extra layer's worth of weights.
    """
    tied = getattr(getattr(getattr(module, "language", module), "config", None), "tie_word_embeddings", False)

    def convert(name: str, child: nn.Module) -> nn.Module | None:
        if isinstance(child, MultiHeadAttention):  # fused in place; o_proj is packed on its own below
            fuse_siblings(child, "qkv_proj", ["q_proj", "k_proj", "v_proj"])
        if isinstance(child, MLP):
            fuse_siblings(child, "gate_up_proj", ["gate_proj", "up_proj"])
        if isinstance(child, Experts):  # one compiled kernel for a decode step's experts where it runs here
            return KernelExperts(child) if decode_kernels.available() else PackedExperts(child)
        if isinstance(child, Mlp):
            return PackedGeluMlp(child)
        if isinstance(child, nn.Linear) and name != "kv_b_proj" and not (tied and name == "lm_head"):
            return PackedLinear(child)
        return None

    replace_submodules(module, convert)
    kernel_experts = next((m for m in module.modules() if isinstance(m, KernelExperts)), None)
    if kernel_experts is not None:  # every MoE layer has the same sizes: one warm-up compiles for all
        kernel_experts.warm_up()


def pack_network_for_cpu(net: nn.Module) -> None:
    """Pack a whole :class:`~.model.DeepseekVL2Model`: its language model and its vision tower."""
    pack_for_cpu(net.language)
    pack_for_cpu(net.vision)
