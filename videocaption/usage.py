"""What a model call cost, in tokens: how backends report it next to their answers.

A backend's ``describe_batch`` / ``complete_batch`` returns the answers as a list of strings;
backends that can count their tokens return an :class:`Answers` instead, a list of the same
strings that also carries one :class:`Usage` per answer. Code that wants only the texts (and
every wrapper that passes the list on) uses it as before; the pipeline reads ``usage`` where it
is there and records it with each batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """Tokens of one request: its prompt, the images in it, and the answer."""

    prompt_tokens: int  # the whole prompt the model read, image tokens included
    generated_tokens: int  # the answer's tokens (the end-of-sequence token not counted)
    image_tokens: int | None = None  # the prompt's image tokens; None where the backend cannot tell

    def __add__(self, other: Usage) -> Usage:
        images = (
            None if self.image_tokens is None or other.image_tokens is None else self.image_tokens + other.image_tokens
        )
        return Usage(self.prompt_tokens + other.prompt_tokens, self.generated_tokens + other.generated_tokens, images)


class Answers(list[str]):
    """The answers of one model call in request order, with ``usage[i]`` for ``self[i]``.

    Args:
        texts: the answers.
        usage: one entry per answer; None for an answer whose cost is unknown.
    """

    def __init__(self, texts: Iterable[str], usage: Sequence[Usage | None]) -> None:
        super().__init__(texts)
        if len(usage) != len(self):
            raise ValueError(f"{len(usage)} usage entries for {len(self)} answers")
        self.usage: list[Usage | None] = list(usage)


def usage_of(answers: Sequence[str]) -> list[Usage | None]:
    """One entry per answer: what the backend reported, or None everywhere for a plain list."""
    usage = getattr(answers, "usage", None)
    if usage is None or len(usage) != len(answers):
        return [None] * len(answers)
    return list(usage)


def usage_dict(usage: Usage, seconds: float) -> dict[str, int | float | None]:
    """The ``usage`` object of result.json: the counts, and answer tokens per second of model time."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "image_tokens": usage.image_tokens,
        "generated_tokens": usage.generated_tokens,
        "tokens_per_second": round(usage.generated_tokens / seconds, 3) if seconds > 0 else None,
    }
