"""Constrained decoding: a JSON Schema's grammar applied to the logits, within a token budget.

llguidance (Rust, no dependencies; docs/events.md says why it was chosen) computes, for each
step, which tokens keep the output a prefix of a valid document. That alone is not enough for
a bounded answer: a model cut off by ``max_new_tokens`` stops mid-object. So each row also
keeps a *closing plan*: tokens that finish the document from where it is, found greedily
(closing quotes and brackets first, forced tokens such as property names as llguidance gives
them), and checked to fit the budget left. The model's token is taken only when a plan from the
state after it still fits; otherwise the row follows its plan. By induction the output is a
complete, valid document whenever the first plan fits, which :meth:`JsonGuide.min_tokens`
lets callers check before decoding (budgets below it are refused up front).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Tried first when a plan is built, in this order: close a string, an object, an array, go
# on to the next (required) field, a shortest number.
CLOSING_TEXT = ('"', "}", "]", ",", "0")
# A plan longer than this is not looked for (a schema needing more is refused up front).
MAX_PLAN_TOKENS = 1024


class GrammarTokenizer:
    """A tokenizer as llguidance sees it, built once per model (about 10 ms to 1 s)."""

    def __init__(self, llg_tokenizer: Any, vocab_size: int) -> None:
        self.llg = llg_tokenizer
        self.vocab_size = vocab_size  # the logits' width (may exceed the tokenizer's own vocabulary)
        self.eos = llg_tokenizer.eos_token
        self.closing = [ids[0] for text in CLOSING_TEXT if len(ids := llg_tokenizer.tokenize_str(text)) == 1]

    @classmethod
    def from_tokenizers_json(cls, tokenizer_json: str, *, vocab_size: int, eos_token_id: int) -> GrammarTokenizer:
        """From a ``tokenizers`` tokenizer serialised as JSON (``Tokenizer.to_str()``)."""
        import llguidance

        slices = llguidance.LLTokenizer.json_slices()  # about twice as fast masks for JSON grammars
        return cls(
            llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_id, slices=slices),
            vocab_size,
        )

    @classmethod
    def from_transformers(cls, tokenizer: Any, *, vocab_size: int, eos_token_id: int | list[int]) -> GrammarTokenizer:
        """From a transformers fast tokenizer."""
        import llguidance.hf

        slices = llguidance.LLTokenizer.json_slices()
        return cls(
            llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_id, slices=slices),
            vocab_size,
        )


class RowGuide:
    """One answer's grammar state and closing plan."""

    def __init__(self, tokenizer: GrammarTokenizer, compiled: str) -> None:
        import llguidance

        self.tokenizer = tokenizer
        self.matcher = llguidance.LLMatcher(tokenizer.llg, compiled, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"the events grammar does not compile: {self.matcher.get_error()}")
        self.plan: list[int] | None = None  # a verified way to finish from the current state
        self.forced = 0  # tokens taken from the plan instead of the model's choice
        self.mask_s = 0.0  # seconds spent in the grammar (masks and plans)
        self.plans = 0  # closing plans searched (each costs a mask per free step)

    def allowed(self, matcher: Any | None = None) -> np.ndarray:
        """[vocab] bool: the tokens the grammar allows next."""
        bits = np.frombuffer((matcher or self.matcher).compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.tokenizer.vocab_size].astype(bool)

    def closing_plan(self, matcher: Any, limit: int) -> list[int] | None:
        """Tokens that finish the document from ``matcher``'s state (left untouched), or None
        when the greedy search needs more than ``limit``."""
        self.plans += 1
        m = matcher.deep_copy()
        plan: list[int] = []
        while not m.is_accepting():
            forced = m.compute_ff_tokens()
            if forced:
                step = forced
            else:
                allowed = self.allowed(m)
                step = [next((t for t in self.tokenizer.closing if allowed[t]), None)]
                if step[0] is None:  # no closing character fits: the first allowed token (ids
                    candidates = np.flatnonzero(allowed)  # of single bytes come first)
                    candidates = candidates[candidates != self.tokenizer.eos]
                    if not len(candidates):
                        return None
                    step = [int(candidates[0])]
            plan.extend(step)
            if len(plan) > limit or not m.consume_tokens(step):
                return None
        return plan

    @staticmethod
    def still_closes(matcher: Any, plan: list[int]) -> bool:
        """Whether ``plan`` also finishes the document from ``matcher``'s state (left untouched)."""
        m = matcher.deep_copy()
        return m.consume_tokens(plan) and m.is_accepting()

    def choose(self, logits: torch.Tensor, remaining: int | None) -> int:
        """The next token: the model's best allowed one, or the plan's when that would not fit.

        Args:
            logits: [vocab] this row's scores.
            remaining: tokens the row may still emit, this one included (None: unbounded).
        """
        started = time.perf_counter()
        if self.matcher.is_stopped():  # the document is complete: only the end remains
            self.mask_s += time.perf_counter() - started
            return self.tokenizer.eos
        # In numpy: one thread, no OpenMP pool woken for a 100k-element select.
        scores = logits[: self.tokenizer.vocab_size].detach().float().cpu().numpy()
        token = int(np.where(self.allowed(), scores, -np.inf).argmax())
        if remaining is not None and token != self.tokenizer.eos:
            if self.plan is None:
                self.plan = self.closing_plan(self.matcher, remaining)
            if self.plan is not None and (not self.plan or token != self.plan[0]):
                after = self.matcher.deep_copy()
                after.consume_token(token)
                # Most tokens (a string's text) leave the plan working: checking that takes no mask.
                if self.plan and len(self.plan) <= remaining - 1 and self.still_closes(after, self.plan):
                    new_plan = self.plan
                else:
                    new_plan = self.closing_plan(after, remaining - 1)
                if new_plan is None:  # the model's token would not leave room to finish
                    if not self.plan:  # complete already: end here
                        self.mask_s += time.perf_counter() - started
                        return self.tokenizer.eos
                    token, self.forced = self.plan[0], self.forced + 1
                    self.plan = self.plan[1:]
                else:
                    self.matcher, self.plan = after, new_plan
                    self.mask_s += time.perf_counter() - started
                    return token
            elif self.plan:
                self.plan = self.plan[1:]
        self.matcher.consume_token(token)
        self.mask_s += time.perf_counter() - started
        return token


class JsonGuide:
    """The grammar of one generate call: one :class:`RowGuide` per row (its own schema each).

    Passed to :func:`videocaption.deepseek_vl2.generation.generate` (``guide``), or wrapped as a
    transformers logits processor; both are greedy.
    """

    def __init__(self, tokenizer: GrammarTokenizer, compiled: Sequence[str]) -> None:
        self.rows = [RowGuide(tokenizer, grammar) for grammar in compiled]

    def choose(self, row: int, logits: torch.Tensor, remaining: int | None) -> int:
        return self.rows[row].choose(logits, remaining)

    @property
    def mask_s(self) -> float:
        return sum(row.mask_s for row in self.rows)

    @property
    def forced(self) -> int:
        return sum(row.forced for row in self.rows)


def min_tokens(tokenizer: GrammarTokenizer, compiled: str) -> int:
    """Tokens of the shortest document the closing search finds from the start (the least
    ``max_new_tokens`` that guarantees a complete object).

    Raises:
        ValueError: no document within MAX_PLAN_TOKENS tokens.
    """
    row = RowGuide(tokenizer, compiled)
    plan = row.closing_plan(row.matcher, MAX_PLAN_TOKENS)
    if plan is None:
        raise ValueError(f"the events schema has no document shorter than {MAX_PLAN_TOKENS} tokens")
    return len(plan)


class GuideLogitsProcessor:
    """A transformers ``LogitsProcessor`` that makes greedy ``generate`` follow a :class:`JsonGuide`.

    Each call keeps only the guide's token per row (all others -inf), so ``argmax`` picks it.
    """

    def __init__(self, guide: JsonGuide, prompt_length: int, max_new_tokens: int) -> None:
        self.guide = guide
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            token = self.guide.choose(row, scores[row], self.max_new_tokens - step)
            forced[row, token] = 0.0
        return forced
