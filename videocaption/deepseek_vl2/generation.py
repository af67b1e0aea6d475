"""Greedy decoding with a KV cache over a left-padded batch.

Each row is positioned by its own real tokens (``attention_mask.cumsum(-1) - 1``, as transformers'
generate does; padding gets position 1 and is never attended to), so padding never changes a
row's numbers: a conversation decodes the same alone or in any batch. A row that emits ``eos``
leaves the batch (its cache rows are dropped) while the others go on. A padded batch's prompts
are run one row at a time (:func:`prefill_rows_alone`) and only the decoding steps are batched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .language import DeepseekV2ForCausalLM, KVCache, cache_dtype, key_block


@dataclass
class GenerationOutput:
    """``sequences`` [B, steps]: greedy ids, ``pad_token_id`` after a row's eos (eos included).

    ``scores``: per step the float32 logits [B, vocab] the step chose from; NaN for rows that had
    already finished. ``lengths``: new tokens per row, eos excluded. ``prefill_s`` / ``decode_s``:
    wall time of the prompt forward (up to the first token's logits) and of all later steps.
    """

    sequences: torch.Tensor
    scores: list[torch.Tensor] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0


class TokenGuide(Protocol):
    """Chooses a row's next token from its logits (constrained decoding; see backends/grammar.py)."""

    def choose(self, row: int, logits: torch.Tensor, remaining: int | None) -> int:
        """``row``: the original row; ``logits`` [vocab]; ``remaining``: tokens the row may still
        emit, this one included."""


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timings mean something on GPUs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool -> [B, T] int64 positions counted over real tokens only (1 on padding)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(~attention_mask.bool(), 1)


@torch.inference_mode()
def generate(
    language: DeepseekV2ForCausalLM,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int | Sequence[int],
    eos_token_id: int,
    pad_token_id: int | None = None,
    output_scores: bool = False,
    guide: TokenGuide | None = None,
) -> GenerationOutput:
    """Greedy continuation of the prompts ``inputs_embeds`` [B, T, D] (left-padded, mask [B, T]).

    ``max_new_tokens`` is one limit for all rows or one per row (a row near the end of the
    context may get fewer tokens without shortening the others). ``guide``: picks each row's
    token instead of the plain argmax (a grammar that keeps the answer valid JSON).
    """
    batch, prompt_len, _ = inputs_embeds.shape
    device = inputs_embeds.device
    pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    limits = [max_new_tokens] * batch if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
    if len(limits) != batch:
        raise ValueError(f"{len(limits)} max_new_tokens limits for {batch} rows")
    limits = [max(n, 0) for n in limits]
    steps = max(limits, default=0)
    mask = attention_mask.to(device=device, dtype=torch.bool)
    if not bool(mask[:, -1].all()):
        raise ValueError("generate expects left padding: the last prompt column must be real for every row")
    sequences = torch.full((batch, steps), pad_token_id, dtype=torch.long, device=device)
    out = GenerationOutput(sequences=sequences, lengths=list(limits))
    active_rows = [row for row in range(batch) if limits[row] > 0]
    if not active_rows:
        return out

    positions = position_ids_from_mask(mask)
    kv_dtype = cache_dtype(device, inputs_embeds.dtype)
    cache = KVCache(
        capacity=prompt_len + steps - 1, dtype=kv_dtype, key_block=key_block(device, kv_dtype, language.config)
    )
    if len(active_rows) < batch:  # rows with no budget never enter
        keep = torch.tensor(active_rows, device=device)
        inputs_embeds, mask, positions = inputs_embeds[keep], mask[keep], positions[keep]
    padded = not bool(mask.all())
    active = torch.tensor(active_rows, device=device)  # original row of each batch row still decoding
    remaining = [limits[row] for row in active_rows]  # budget left per batch row (known on the host)
    next_position = positions[:, -1] + 1  # [b]
    start = time.perf_counter()
    if padded:
        last_hidden = prefill_rows_alone(language, inputs_embeds, mask, positions, cache)
    else:
        last_hidden = language.model(inputs_embeds, positions, None, cache)[:, -1]
    logits = language.logits(last_hidden)  # [b, vocab] float32
    _synchronize(device)
    prefilled = time.perf_counter()
    out.prefill_s = prefilled - start

    for step in range(steps):
        if output_scores:
            scores = logits.new_full((batch, logits.shape[-1]), float("nan"))
            scores[active] = logits
            out.scores.append(scores)
        if guide is None:
            tokens = logits.argmax(dim=-1)  # [b]
        else:  # on the host: the grammar's masks are computed there
            chosen = [guide.choose(row, logits[i], remaining[i]) for i, row in enumerate(active_rows)]
            tokens = torch.tensor(chosen, dtype=torch.long, device=device)
        sequences[active, step] = tokens
        # The step's one host read (a device sync on a GPU): which rows chose eos.
        eos = (tokens == eos_token_id).tolist()
        remaining = [n - 1 for n in remaining]
        done = [hit or n == 0 for hit, n in zip(eos, remaining)]
        for row, hit in zip(active_rows, eos):
            if hit:
                out.lengths[row] = step
        if all(done):
            break
        if any(done):  # finished rows leave the batch
            kept = [i for i, d in enumerate(done) if not d]
            keep = torch.tensor(kept, device=device)
            active_rows, remaining = [active_rows[i] for i in kept], [remaining[i] for i in kept]
            active, tokens, mask, next_position = active[keep], tokens[keep], mask[keep], next_position[keep]
            cache.select(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        embeds = language.model.embed_tokens(tokens[:, None])  # [b, 1, D]
        hidden = language.model(embeds, next_position[:, None], mask if padded else None, cache)
        logits = language.logits(hidden[:, -1])
        next_position = next_position + 1
    _synchronize(device)
    out.decode_s = time.perf_counter() - prefilled
    return out


def prefill_rows_alone(
    language: DeepseekV2ForCausalLM,
    inputs_embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
) -> torch.Tensor:
    """Prompt forward of a left-padded batch one row at a time; fills ``cache`` for the batch.

    Why not one padded forward: padding needs a [B, 1, T, T] attention mask, which sends
    attention down SDPA's masked path (the mask is materialised as floats and attention runs
    about three times slower than the causal kernel on CPU) and computes the padding positions
    for nothing. A row alone is causal and unpadded, so each row costs what it would cost alone,
    and its numbers are those of a one-by-one call. Decoding then runs batched: there every
    step is one token per row and padding only masks a few keys.

    Returns the last position's hidden state per row, [B, hidden].
    """
    last_hidden = []
    row_caches = []
    for row in range(inputs_embeds.shape[0]):
        start = int((~mask[row]).sum())  # left padding: the real tokens are the suffix
        row_cache = KVCache(dtype=cache.dtype)
        hidden = language.model(inputs_embeds[row : row + 1, start:], positions[row : row + 1, start:], None, row_cache)
        last_hidden.append(hidden[:, -1])
        row_caches.append((start, row_cache))
    cache.fill_left_padded(row_caches, inputs_embeds.shape[1])
    return torch.cat(last_hidden)
