"""DeepSeek-MoE decoder (DeepSeek-V2 architecture) for DeepSeek-VL2.

Two attention kinds exist in the official checkpoints:

* ``use_mla: false`` (deepseek-vl2-tiny): plain multi-head attention exactly as transformers
  4.38's ``LlamaAttention`` (head_dim = hidden / heads, rotate-half RoPE over the whole head);
* ``use_mla: true`` (-small, base): multi-head latent attention. Keys and values are compressed
  into one ``kv_lora_rank`` latent per token (plus a small shared RoPE key); ``kv_b_proj`` is
  absorbed into the query and the output so attention runs directly on the cached latents.

Every MLP after ``first_k_dense_replace`` is a mixture of experts: a router picks
``num_experts_per_tok`` routed experts per token (softmax top-k, or the sigmoid ``noaux_tc``
scheme with a score-correction bias and expert groups) and shared experts see every token.

Attention goes through :func:`attention`, a thin wrapper around
``torch.nn.functional.scaled_dot_product_attention`` (no xformers/flash-attn), so a single
function can be swapped to change the kernel. Module and parameter names mirror the checkpoint
keys (``model.layers.N.self_attn.q_proj`` ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import decode_kernels
from .config import LanguageConfig

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# --------------------------------------------------------------------------- attention kernel
def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for [B, H, Tq, D] queries; ``mask`` is boolean, True = attend."""
    if q.shape[-2] == 1 and q.device.type == "cpu":
        return one_query_attention(q, k, v, mask=mask, scale=scale)
    if k.dtype != q.dtype:  # a float32 cache (see cache_dtype) under a bfloat16 prompt: exact round trip
        k, v = k.to(q.dtype), v.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def one_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of one new token per row (a decode step) as two float32 matrix-vector products.

    Why not SDPA here: on CPU its flash kernel splits work by query blocks, and one query per
    head leaves it a few tiny tasks. The scores are computed as ``keys @ query`` (the cache is the
    matrix, read once, row by row) rather than ``query @ keys^T``: for 1,800 cached keys x 10 heads
    that is 1.0 ms a layer against 1.7 ms, and SDPA takes 2.8 ms (idle 2-core EPYC; the cache held
    in float32, see :func:`cache_dtype`; docs/performance.md). Float32 throughout is at least as
    exact as the flash kernel, which accumulates in float32 too. Keys and values shared by all
    heads (MLA's latents, expanded with stride 0) are used once, not per head. A bfloat16 cache goes
    to the compiled kernel (``decode_kernels.one_query_attention``: the same sums, float32).
    """
    if k.dim() == 5:  # keys in blocks (KVCache.blocked; only where the compiled kernels run)
        return decode_kernels.compiled_blocked_query_attention(q, k, v, mask, scale)
    b, h, t, d = q.shape
    if h > 1 and k.stride(1) == 0 and v.stride(1) == 0:  # one key/value for all heads: fold heads into rows
        out = one_query_attention(q.reshape(b, 1, h * t, d), k[:, :1], v[:, :1], mask=mask, scale=scale)
        return out.view(b, h, t, -1)
    if k.dtype != torch.float32 and decode_kernels.available():  # a bfloat16 cache (see cache_dtype)
        return decode_kernels.compiled_one_query_attention(q, k, v, mask, scale)
    scores = torch.matmul(k.float(), q.float().transpose(-1, -2)).mul_(scale).transpose(-1, -2)  # [B, H, t, L]
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(q.dtype)


def cache_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype to keep keys and values in while decoding on ``device`` with a ``dtype`` model.

    The model's dtype, but on a CPU without the compiled decode kernels (``decode_kernels.available``)
    in bfloat16 or float16: float32 there. The eager one-query attention (:func:`one_query_attention`)
    reads the cache in float32, and a bfloat16 cache meant a fresh float32 copy of 2 x 4.6 MB a
    layer at 1,800 tokens every step, about a quarter of the step; a float32 cache holds the same
    values widened (nothing changes numerically) at twice the memory (252 MB instead of 126 MB for
    a 2,055-token conversation of deepseek-vl2-tiny). The compiled kernel widens each value in
    registers, so it reads a bfloat16 cache at its own width: half the bytes a step, half the memory.
    """
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not decode_kernels.available():
        return torch.float32
    return dtype


# The one attention function every layer calls; replace it to try another kernel.
attention: Callable[..., torch.Tensor] = sdpa_attention


def _attend(q, k, v, *, mask, is_causal, scale):
    # Looked up at call time so that reassigning ``language.attention`` takes effect.
    return attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)


# --------------------------------------------------------------------------- cache
class KVCache:
    """Per-layer key/value tensors of a decoding batch, grown in place along the sequence.

    Entries are [B, heads, T, dim] (for MLA: the RoPE key [B, 1, T, rope] and the compressed latent
    [B, 1, T, kv_lora_rank]). Storage is preallocated to ``capacity`` tokens so that a decode step
    writes one column instead of copying the whole cache, plus one spare position (a spare block
    with ``key_block``): the cached tensors handed to attention are then never the whole buffer, so
    they have the same strided layout at every step, and the compiled attention
    (``decode_kernels``) is not compiled again for the last step's contiguous one.

    With ``key_block`` > 0 the keys are stored in blocks of that many positions, each block
    transposed: [B, heads, blocks, dim, key_block] (see :func:`key_block`); :meth:`blocked` hands
    them to a decode step's attention that way, :meth:`keys_values` as a row-major copy.
    """

    def __init__(self, capacity: int = 0, dtype: torch.dtype | None = None, key_block: int = 0) -> None:
        self.capacity = capacity
        self.dtype = dtype  # storage dtype (None: the keys' own; see cache_dtype)
        self.key_block = key_block
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._lengths: list[int] = []

    def __len__(self) -> int:
        """Number of cached positions (those of the first layer; all layers agree between calls)."""
        return self._lengths[0] if self._lengths else 0

    def length(self, layer_idx: int) -> int:
        """Positions cached so far for ``layer_idx`` (0 before its first call)."""
        return self._lengths[layer_idx] if layer_idx < len(self._lengths) else 0

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's [B, h, t, d] key/value for ``layer_idx``; return all cached so far."""
        self.append(layer_idx, key, value)
        return self.keys_values(layer_idx)

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Append this step's [B, h, t, d] key/value for ``layer_idx``."""
        if layer_idx == len(self._keys):  # first call for this layer
            b, h, t, d = key.shape
            dtype = self.dtype or key.dtype
            self._keys.append(self._new_keys(b, h, d, max(self.capacity, t), dtype, key.device))
            self._values.append(value.new_zeros(b, h, self._slots(max(self.capacity, t)), value.shape[3], dtype=dtype))
            self._lengths.append(0)
        start, end = self._lengths[layer_idx], self._lengths[layer_idx] + key.shape[2]
        if end >= self._values[layer_idx].shape[2]:  # out of room: grow (doubling keeps appends cheap)
            self._grow(layer_idx, max(end, 2 * self._values[layer_idx].shape[2]))
        self._store_keys(self._keys[layer_idx], key, start)
        self._values[layer_idx][:, :, start:end] = value
        self._lengths[layer_idx] = end

    def keys_values(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All cached [B, h, L, d] keys and values of ``layer_idx`` (blocked keys: a row-major copy)."""
        end, keys = self._lengths[layer_idx], self._keys[layer_idx]
        if self.key_block:
            blocks = -(-end // self.key_block)
            keys = keys[:, :, :blocks].transpose(-1, -2).reshape(*keys.shape[:2], blocks * self.key_block, -1)
        return keys[:, :, :end], self._values[layer_idx][:, :, :end]

    def blocked(self, layer_idx: int, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a decode step's attention reads of ``layer_idx`` with ``key_block``, in whole blocks.

        Keys [B, h, n, d, key_block], values [B, h, n * key_block, d] and ``mask`` [B, 1, t, L]
        (None: all cached positions) widened to [B, 1, t, n * key_block], False past the cache's
        end: the last block's unused positions hold zero values and keys that must not be attended.
        """
        end = self._lengths[layer_idx]
        positions = -(-end // self.key_block) * self.key_block
        keys = self._keys[layer_idx][:, :, : positions // self.key_block]
        values = self._values[layer_idx][:, :, :positions]
        rows, queries = (keys.shape[0], 1) if mask is None else (mask.shape[0], mask.shape[2])
        widened = torch.zeros(rows, 1, queries, positions, dtype=torch.bool, device=keys.device)
        widened[..., :end] = True if mask is None else mask
        return keys, values, widened

    def fill_left_padded(self, rows: Sequence[tuple[int, KVCache]], length: int) -> None:
        """Become the cache of a left-padded batch of ``length`` positions from one cache per row.

        ``rows`` holds, per batch row, where its real tokens start and the cache of those tokens
        alone. Padding positions are zeros (never attended to, but 0 * NaN from uninitialised
        memory would still poison the attention sum).
        """
        if self._keys:
            raise ValueError("fill_left_padded needs an empty cache")
        positions = max(self.capacity, length)
        for layer_idx in range(len(rows[0][1]._keys)):
            first_keys, first_values = rows[0][1].keys_values(layer_idx)
            _, h, _, d = first_keys.shape
            keys = self._new_keys(len(rows), h, d, positions, first_keys.dtype, first_keys.device)
            values = first_values.new_zeros(len(rows), h, self._slots(positions), first_values.shape[3])
            for row, (start, row_cache) in enumerate(rows):
                if length - start != len(row_cache):
                    raise ValueError(f"row {row}: {len(row_cache)} cached positions, expected {length - start}")
                row_keys, row_values = row_cache.keys_values(layer_idx)
                self._store_keys(keys[row : row + 1], row_keys, start)
                values[row, :, start:length] = row_values[0]
            self._keys.append(keys)
            self._values.append(values)
            self._lengths.append(length)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished conversations leave the batch)."""
        self._keys = [k.index_select(0, rows) for k in self._keys]
        self._values = [v.index_select(0, rows) for v in self._values]

    def _slots(self, positions: int) -> int:
        """Storage positions for ``positions`` cached ones: the spare position (block) added, whole blocks."""
        if not self.key_block:
            return positions + 1
        return (-(-positions // self.key_block) + 1) * self.key_block

    def _new_keys(self, b: int, h: int, d: int, positions: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Zeroed key storage for ``positions`` in this cache's layout."""
        slots = self._slots(positions)
        if self.key_block:
            return torch.zeros(b, h, slots // self.key_block, d, self.key_block, dtype=dtype, device=device)
        return torch.zeros(b, h, slots, d, dtype=dtype, device=device)

    def _grow(self, layer_idx: int, positions: int) -> None:
        """Reallocate ``layer_idx``'s storage for ``positions``, keeping what it holds."""
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        b, h, _, d = values.shape
        grown_keys = self._new_keys(b, h, keys.shape[3], positions, keys.dtype, keys.device)
        grown_values = values.new_zeros(b, h, self._slots(positions), d)
        grown_keys[:, :, : keys.shape[2]] = keys  # dimension 2 is positions, or blocks of them
        grown_values[:, :, : values.shape[2]] = values
        self._keys[layer_idx], self._values[layer_idx] = grown_keys, grown_values

    def _store_keys(self, storage: torch.Tensor, key: torch.Tensor, start: int) -> None:
        """Write [B, h, t, d] ``key`` at positions ``start``.. of ``storage`` in this cache's layout."""
        t = key.shape[2]
        if not self.key_block:
            storage[:, :, start : start + t] = key
        elif t == 1:  # a decode step: one strided column
            storage[:, :, start // self.key_block, :, start % self.key_block] = key[:, :, 0]
        else:
            positions = torch.arange(start, start + t, device=key.device)
            # Two index tensors around a slice: the indexed result is [t, B, h, d].
            storage[:, :, positions // self.key_block, :, positions % self.key_block] = key.permute(2, 0, 1, 3).to(
                storage.dtype
            )


def key_block(device: torch.device, dtype: torch.dtype, config: LanguageConfig) -> int:
    """Positions per block of keys cached in ``dtype`` for decoding on ``device``: 16, or 0 (row-major).

    Blocked where a decode step's attention runs as the compiled kernel on a bfloat16 or float16
    cache (``decode_kernels.blocked_query_attention``), for plain multi-head attention (MLA's
    attention key is built afresh every step). Why: with each block of 16 keys stored transposed
    ([dim, 16], 4 KB in one piece), the kernel computes 16 scores at once, one vector lane a
    position, where row-major keys need each key's 128-wide product summed across a vector. A
    full-size decode step after a 1,799-token prompt ran 1.04-1.20x faster at batch 1 and
    0.99-1.17x at batch 4 (min and median of three runs, each interleaved in one process;
    ``benchmarks.bench_kv_layout``); the keys take no more memory (only the last block's unused
    positions).
    """
    blocked = device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not config.use_mla
    return decode_kernels.KEY_BLOCK if blocked and decode_kernels.available() else 0


# --------------------------------------------------------------------------- building blocks
class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype *before* the weight (as upstream)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # F.rms_norm is x * rsqrt(mean(x^2) + eps) in one operator (fewer per decode step)
        x = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=self.variance_epsilon)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotate-half RoPE for arbitrary per-row positions, built in float32."""

    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        self.dim = dim
        self.base = base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # inv_freq and the angle products as upstream: arange(0, dim, 2) / dim, float32 throughout.
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=position_ids.device).float() / self.dim))
        freqs = position_ids.float()[..., None] * inv_freq  # [B, T, dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, T, D] by [B, T, D] tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...): MLA's RoPE weights pair adjacent dims."""
    *lead, d = x.shape
    return x.view(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)


# --------------------------------------------------------------------------- attention modules
class MultiHeadAttention(nn.Module):
    """Plain multi-head attention (transformers 4.38 ``LlamaAttention``), used when ``use_mla`` is false."""

    def __init__(self, config: LanguageConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        # q, k and v as one weight where a layout fuses them (packing.FusedPackedLinear: one weight
        # read and one oneDNN call instead of three in a decode step).
        self.qkv_proj: nn.Module | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv_proj(x) if self.qkv_proj is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            earlier = cache.length(self.layer_idx) > 0  # else a fresh prompt keeps its own keys
            cache.append(self.layer_idx, k, v)
            if earlier and t == 1 and cache.key_block:  # a decode step over blocked keys (see key_block)
                k, v, mask = cache.blocked(self.layer_idx, mask)  # [B, Hkv, n, D, block], [B, Hkv, L', D]
            elif earlier:
                k, v = cache.keys_values(self.layer_idx)  # [B, Hkv, L, D]
        if self.num_kv_heads != self.num_heads:  # grouped-query attention: share kv heads
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = _attend(q, k, v, mask=mask, is_causal=is_causal, scale=self.head_dim**-0.5)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 multi-head latent attention with ``kv_b_proj`` absorbed (``use_mla`` true).

    Per token only ``compressed_kv`` (kv_lora_rank, after its RMSNorm) and one RoPE key ``k_pe``
    shared by all heads are cached. Since k_nope = W_uk c and v = W_uv c with W = kv_b_proj, the
    score q_nope . k_nope equals (W_uk^T q_nope) . c and the value sum is W_uv (sum_j a_j c_j):
    attention runs on the latents with query [W_uk^T q_nope, q_pe] against key [c, k_pe] and
    value c, then W_uv maps the result to each head's v_head_dim.
    """

    def __init__(self, config: LanguageConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.q_head_dim = config.q_head_dim
        hidden, bias = config.hidden_size, config.attention_bias
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, self.num_heads * self.q_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank)
            self.q_b_proj = nn.Linear(self.q_lora_rank, self.num_heads * self.q_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank)
        self.kv_b_proj = nn.Linear(
            self.kv_lora_rank, self.num_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden, bias=bias)
        self.softmax_scale = self.q_head_dim**-0.5  # of the un-absorbed head size (nope + rope)

    def project_query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, hidden] -> q_nope [B, H, T, nope], q_pe [B, H, T, rope] (RoPE not yet applied)."""
        b, t, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, self.num_heads, self.q_head_dim).transpose(1, 2)
        return q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)

    def project_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, hidden] -> compressed_kv [B, 1, T, kv_lora_rank] (normed), k_pe [B, 1, T, rope] (no RoPE yet)."""
        compressed_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        return self.kv_a_layernorm(compressed_kv).unsqueeze(1), k_pe.unsqueeze(1)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q_nope, q_pe = self.project_query(x)
        compressed_kv, k_pe = self.project_latent(x)
        cos, sin = rope
        q_pe = apply_rotary(deinterleave(q_pe), cos, sin)
        k_pe = apply_rotary(deinterleave(k_pe), cos, sin)
        if cache is not None:
            k_pe, compressed_kv = cache.update(self.layer_idx, k_pe, compressed_kv)  # [B, 1, L, .]
        w = self.kv_b_proj.weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        q_absorb, out_absorb = w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]  # [H, nope, c], [H, v, c]
        query = torch.cat([torch.matmul(q_nope, q_absorb), q_pe], dim=-1)  # [B, H, T, c + rope]
        key = torch.cat([compressed_kv, k_pe], dim=-1).expand(-1, self.num_heads, -1, -1)  # [B, H, L, c + rope]
        value = compressed_kv.expand(-1, self.num_heads, -1, -1)  # [B, H, L, c]
        out = _attend(query, key, value, mask=mask, is_causal=is_causal, scale=self.softmax_scale)  # [B, H, T, c]
        out = torch.matmul(out, out_absorb.mT)  # [B, H, T, v]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.v_head_dim))


# --------------------------------------------------------------------------- feed-forward
class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LanguageConfig, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACTIVATIONS[config.hidden_act]
        self.gate_up_proj: nn.Module | None = None  # gate and up as one GEMM, where a layout fuses them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x) if self.gate_up_proj is not None else (self.gate_proj(x), self.up_proj(x))
        return self.down_proj(self.act_fn(gate) * up)


def grouped_mm(x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows ``ends[e-1]:ends[e]`` of ``x`` [N, in] times ``weight[e]``^T [E, out, in] -> [N, out].

    ``torch._grouped_mm`` runs all groups in one call with the group ends on the device (no host
    sync; one kernel on CUDA, a C++ loop on CPU). Where it is missing or refuses the dtype, a
    Python loop over the groups does the same (it reads ``ends`` on the host).
    """
    if _GROUPED_MM:
        try:
            return torch._grouped_mm(x, weight.transpose(-2, -1), offs=ends)
        except RuntimeError:  # e.g. a dtype or GPU generation the kernel does not cover
            pass
    return looped_mm(x, weight, ends)


def looped_mm(x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """:func:`grouped_mm` as a Python loop of one ``F.linear`` per group (reads ``ends`` on the host)."""
    out, start = x.new_empty(x.shape[0], weight.shape[1]), 0
    for e, end in enumerate(ends.tolist()):
        if end > start:
            out[start:end] = F.linear(x[start:end], weight[e])
        start = end
    return out


_GROUPED_MM = hasattr(torch, "_grouped_mm")


class Experts(nn.Module):
    """The routed experts of one MoE layer, stored stacked so that all of them run as grouped GEMMs.

    ``gate_up_proj`` [E, 2 * I, hidden] holds each expert's gate rows then its up rows,
    ``down_proj`` [E, hidden, I]. Why stacked: a per-expert Python loop needs every expert's token
    count on the host (a sync per layer per token on a GPU, which also rules out CUDA graphs) and
    makes one small GEMM per expert; stacked, each weight is one ``grouped_mm`` over tokens sorted
    by expert. The checkpoint keeps one key per expert (``N.gate_proj.weight``, ``N.up_proj.weight``,
    ``N.down_proj.weight`` under ``mlp.experts``): ``state_dict`` and ``load_state_dict`` speak those
    keys, and :func:`~videocaption.deepseek_vl2.weights.load_weights` copies each file tensor
    straight into its row, so loading never holds a layer twice.
    """

    KEYS = ("gate_proj", "up_proj", "down_proj")

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        n, hidden, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.intermediate_size = n, inter
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.empty(n, hidden, inter))
        self.act_fn = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """[N, hidden] tokens sorted by expert, expert e owning rows ``ends[e-1]:ends[e]`` -> [N, hidden]."""
        gate, up = grouped_mm(x, self.gate_up_proj, ends).chunk(2, dim=-1)  # 2 x [N, I]
        return grouped_mm(self.act_fn(gate) * up, self.down_proj, ends)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` alone on [..., hidden] (the straightforward formula, for checks)."""
        gate, up = self.gate_up_proj[e].split(self.intermediate_size)
        return F.linear(self.act_fn(F.linear(x, gate)) * F.linear(x, up), self.down_proj[e])

    def slot(self, key: str) -> torch.Tensor:
        """The rows of the stacked storage that checkpoint key ``N.gate_proj.weight`` (etc.) names."""
        e, name, _ = key.split(".")
        if name == "down_proj":
            return self.down_proj[int(e)]
        gate, up = self.gate_up_proj[int(e)].split(self.intermediate_size)
        return gate if name == "gate_proj" else up

    def checkpoint_keys(self) -> list[str]:
        return [f"{e}.{name}.weight" for e in range(self.num_experts) for name in self.KEYS]

    def materialize(self, device: torch.device, dtype: torch.dtype) -> None:
        """Real (uninitialised) storage in place of meta tensors, before rows are copied in."""
        for name in ("gate_up_proj", "down_proj"):
            param = getattr(self, name)
            if param.is_meta:
                setattr(
                    self,
                    name,
                    nn.Parameter(
                        torch.empty(param.shape, device=device, dtype=dtype), requires_grad=param.requires_grad
                    ),
                )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Per-expert keys as in the checkpoint. keep_vars: views (shapes, no copy); otherwise
        # copies, since safetensors refuses to save tensors that share storage.
        for key in self.checkpoint_keys():
            row = self.slot(key)
            destination[prefix + key] = row if keep_vars else row.detach().clone()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        keys = [k for k in self.checkpoint_keys() if prefix + k in state_dict]
        if keys:
            first = state_dict[prefix + keys[0]]
            self.materialize(first.device, first.dtype)
        with torch.no_grad():
            for key in keys:
                self.slot(key).copy_(state_dict[prefix + key])
        missing_keys.extend(prefix + k for k in self.checkpoint_keys() if prefix + k not in state_dict)


class MoEGate(nn.Module):
    """Router: which experts each token goes to and with what weight (computed in float32)."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.routed_scaling_factor = config.routed_scaling_factor
        self.scoring_func = config.scoring_func
        self.topk_method = config.topk_method
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(self.n_routed_experts, config.hidden_size))
        if self.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.empty(self.n_routed_experts))

    def _group_mask(self, group_scores: torch.Tensor) -> torch.Tensor:
        """[N, n_group] group scores -> [N, experts] bool: experts of the topk_group best groups."""
        n = group_scores.shape[0]
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1).bool()
        return group_mask.unsqueeze(-1).expand(n, self.n_group, self.n_routed_experts // self.n_group).reshape(n, -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, hidden] -> expert ids [N, top_k] and float32 weights [N, top_k]."""
        logits = F.linear(x.float(), self.weight.float())  # [N, experts]
        scores = logits.softmax(dim=-1) if self.scoring_func == "softmax" else logits.sigmoid()
        n = scores.shape[0]
        if self.topk_method == "greedy":
            weight, idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        elif self.topk_method == "group_limited_greedy":
            group_scores = scores.view(n, self.n_group, -1).max(dim=-1).values
            masked = scores.masked_fill(~self._group_mask(group_scores), 0.0)
            weight, idx = torch.topk(masked, k=self.top_k, dim=-1, sorted=False)
        else:  # noaux_tc: choose on bias-corrected scores, weigh with the raw ones
            biased = scores + self.e_score_correction_bias.float().unsqueeze(0)
            group_scores = biased.view(n, self.n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
            masked = biased.masked_fill(~self._group_mask(group_scores), 0.0)  # 0.0, not -inf, as upstream
            idx = torch.topk(masked, k=self.top_k, dim=-1, sorted=False)[1]
            weight = scores.gather(1, idx)
        if self.top_k > 1 and self.norm_topk_prob:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, weight * self.routed_scaling_factor


class MoE(nn.Module):
    """Routed experts plus always-on shared experts."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.experts = Experts(config)
        self.gate = MoEGate(config)
        self.shared_experts = (
            MLP(config, config.moe_intermediate_size * config.n_shared_experts) if config.n_shared_experts else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, hidden]
        idx, weight = self.gate(flat)  # [N, k]
        y = self.route(flat, idx, weight).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y

    def route(self, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the chosen experts' outputs: tokens sorted by expert, one grouped GEMM per weight.

        Everything stays on the device (no token count is read on the host); results are
        weighted and summed in float32 (as upstream) with ``index_add_``. A decode step's few
        tokens go to the experts' one compiled kernel where they have one (``few_tokens``).
        """
        n, k = idx.shape
        few_tokens = getattr(self.experts, "few_tokens", None)  # packing.KernelExperts (CPU bfloat16)
        if few_tokens is not None and n <= decode_kernels.FEW_TOKENS:
            return few_tokens(x, idx, weight)
        flat_idx = idx.reshape(-1)  # [N * k]
        order = flat_idx.argsort(stable=True)
        token_of = order // k  # token of each sorted assignment
        experts = torch.arange(self.experts.num_experts, device=x.device, dtype=flat_idx.dtype)
        ends = torch.searchsorted(flat_idx[order], experts, right=True).to(torch.int32)  # [E] group ends
        y = self.experts(x.index_select(0, token_of), ends)  # [N * k, hidden]
        weights = weight.reshape(-1).index_select(0, order).unsqueeze(-1)  # [N * k, 1] float32
        out = torch.zeros(n, x.shape[-1], dtype=torch.float32, device=x.device)
        return out.index_add_(0, token_of, y.float() * weights).to(x.dtype)


# --------------------------------------------------------------------------- decoder
class DecoderLayer(nn.Module):
    def __init__(self, config: LanguageConfig, layer_idx: int) -> None:
        super().__init__()
        attention_cls = MultiHeadLatentAttention if config.use_mla else MultiHeadAttention
        self.self_attn = attention_cls(config, layer_idx)
        self.mlp = MoE(config) if config.is_moe_layer(layer_idx) else MLP(config, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, rope, mask, is_causal, cache):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, is_causal, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask(
    key_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Boolean [B, 1, q, past + q] mask (True = attend) and SDPA's ``is_causal`` flag.

    ``key_mask`` [B, past + q] marks real tokens (False on left padding). Without padding the mask
    is left to SDPA (``is_causal`` for a fresh prompt, nothing for a single new token). With
    padding, each query sees real keys up to itself, and also always itself: a padding query would
    otherwise see no key at all, and some SDPA kernels/backends answer such a row with NaN, which
    would then reach real rows through 0 * NaN in later layers.
    """
    k_len = past_len + q_len
    if key_mask is not None and key_mask.shape[-1] != k_len:
        raise ValueError(f"attention mask covers {key_mask.shape[-1]} positions, expected {k_len}")
    # Whether a given mask is all True is read on the host only for a prompt (q_len > 1): in the
    # per-token loop that read would be a device sync per step, and a one-query mask is cheap.
    if key_mask is None or (q_len > 1 and bool(key_mask.all())):
        if q_len == 1:
            return None, False
        if past_len == 0:
            return None, True
    key_pos = torch.arange(k_len, device=device)
    query_pos = torch.arange(past_len, k_len, device=device)[:, None]
    mask = (key_pos <= query_pos)[None, None]  # [1, 1, q, k] causal
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :].bool()
    return mask | (key_pos == query_pos)[None, None], False


class DeepseekV2Model(nn.Module):
    """Embeddings, decoder layers and the final norm (checkpoint prefix ``language.model``)."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # One RoPE table per forward, shared by all layers (they all rotate the same positions).
        rope_dim = config.qk_rope_head_dim if config.use_mla else config.head_dim
        self.rotary_emb = RotaryEmbedding(rope_dim, config.rope_theta)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask_2d: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """[B, T, hidden] embeddings at [B, T] positions -> last hidden state [B, T, hidden].

        ``attention_mask_2d`` [B, past + T] is True on real tokens (None: no padding); ``cache``
        holds the keys/values of the ``past`` earlier positions and receives the new ones.
        """
        past_len = len(cache) if cache is not None else 0
        mask, is_causal = attention_mask(attention_mask_2d, inputs_embeds.shape[1], past_len, inputs_embeds.device)
        rope = self.rotary_emb(position_ids, inputs_embeds.dtype)  # cos, sin [B, T, rope_dim]
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, rope, mask, is_causal, cache)
        return self.norm(x)


class DeepseekV2ForCausalLM(nn.Module):
    """Decoder plus ``lm_head`` (checkpoint prefix ``language``)."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekV2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head, cast to float32 as upstream (matters for bf16 runs)."""
        return self.lm_head(hidden).float()

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask_2d: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Float32 logits [B, T, vocab] (use ``model`` + ``logits`` on chosen rows to save memory)."""
        return self.logits(self.model(inputs_embeds, position_ids, attention_mask_2d, cache))
