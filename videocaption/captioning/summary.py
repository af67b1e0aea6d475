"""The summary pass, in rounds when a long video's descriptions do not fit one prompt.

Every prompt sent to the model stays within a token limit (the model's context minus the
answer, or the smaller ``summary_max_prompt_tokens`` option). When all descriptions fit, one
call summarises them. Otherwise consecutive descriptions are grouped into prompts that fit,
each group is summarised (one batched call), and the partial summaries, each covering its
stretch of the video, are summarised the same way, until everything fits one prompt.

Every run ends, whatever the model answers: answers as long as ``max_new_tokens`` allows are cut
like descriptions are. With ``n`` descriptions a summary takes at most ``ceil(log2(n)) + 1``
rounds and fewer than ``2 * n`` prompts (see :meth:`Summarizer.__call__`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from videocaption.backends import VisionLanguageModel
from videocaption.errors import InvalidOptionError
from videocaption.options import CaptionOptions
from videocaption.prompts import PART_SUMMARY_PROMPT, summary_prompt

Item = tuple[float, float, str]  # (start seconds, end seconds, text)
Complete = Callable[[list[str]], list[str]]

# Room a group needs beyond the instruction: two short descriptions with their time labels.
MIN_ROOM_FOR_DESCRIPTIONS = 48
# Added to the final summary prompt when the summary is to cite its evidence (grounded summaries).
CITE_INSTRUCTION = (
    "After each sentence, cite in square brackets the numbers of the descriptions it rests on, e.g. [2] or [1, 3]."
)
CITATION = re.compile(r"\[(\d+(?:\s*[-\u2013,]\s*\d+)*)\]")  # [2], [1, 3], [2-4]
MAX_RANGE = 100  # a range [a-b] wider than this is taken as its two ends only


def cited_numbers(marker: str) -> list[int]:
    """The numbers inside one ``[...]`` marker: ``1, 3`` -> [1, 3]; ``2-4`` -> [2, 3, 4]."""
    numbers: list[int] = []
    for part in marker.split(","):
        ends = [int(n) for n in re.split(r"[-\u2013]", part)]
        if len(ends) == 2 and 0 <= ends[1] - ends[0] <= MAX_RANGE:
            numbers.extend(range(ends[0], ends[1] + 1))
        else:
            numbers.extend(ends)
    return numbers


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class CitedSummary:
    """A summary whose sentences cite the numbered items of the final prompt.

    ``answer`` is the model's text with its ``[n]`` markers; ``items`` the ``(start, end, text)``
    items the final prompt numbered from 1 (descriptions, or part summaries of a long video).
    """

    answer: str
    rounds: int
    items: list[Item] = field(default_factory=list)


def split_citations(text: str) -> list[tuple[str, list[int]]]:
    """Each sentence of ``text`` without its ``[n]`` markers, and the numbers those cite, in order.

    A marker that opens the next sentence (``... door. [2] Then``) belongs to the one it follows,
    as models often write it after the full stop.
    """
    sentences: list[tuple[str, list[int]]] = []
    for part in _SENTENCE_END.split(" ".join(text.split())):
        numbers = [n for match in CITATION.finditer(part) for n in cited_numbers(match.group(1))]
        clean = " ".join(CITATION.sub(" ", part).split())
        clean = re.sub(r"\s+([.,;:!?])", r"\1", clean)
        if not clean or not any(ch.isalnum() for ch in clean):
            if sentences:
                sentences[-1][1].extend(numbers)
            continue
        sentences.append((clean, numbers))
    return sentences


class Summarizer:
    """Summarises ``(start, end, text)`` items with prompts of at most ``limit`` tokens.

    Args:
        model: counts tokens.
        options: the prompts, ``max_new_tokens`` and ``summary_max_prompt_tokens``.
        complete: runs text-only prompts (batched) and returns the answers.

    Raises:
        InvalidOptionError: the limit leaves no room for descriptions next to the instruction.
    """

    def __init__(
        self, model: VisionLanguageModel, options: CaptionOptions, complete: Complete, *, cite: bool = False
    ) -> None:
        self.model = model
        self.cite = cite  # the final prompt numbers its items and asks for [n] citations (see cited)
        self.options = options
        self.complete = complete
        self.limit = model.context_length - options.max_new_tokens
        if options.summary_max_prompt_tokens is not None:
            self.limit = min(self.limit, options.summary_max_prompt_tokens)
        cite_wanted, self.cite = self.cite, False
        needed = max(self._tokens(self.options.summary_prompt, []), self._tokens(PART_SUMMARY_PROMPT, []))
        if self.limit < needed + MIN_ROOM_FOR_DESCRIPTIONS:
            raise InvalidOptionError(
                f"summary prompts are limited to {self.limit} tokens, but the instruction alone takes "
                f"{needed}; allow at least {needed + MIN_ROOM_FOR_DESCRIPTIONS} "
                "(summary_max_prompt_tokens, or a smaller max_new_tokens)"
            )
        # Citing needs room for its longer instruction; a limit that leaves none summarises plainly
        # (as before grounded summaries existed), rather than refusing a limit that used to work.
        self.cite = (
            cite_wanted and self._tokens(self._final_instruction_citing(), []) + MIN_ROOM_FOR_DESCRIPTIONS <= self.limit
        )

    def __call__(self, items: Sequence[Item]) -> tuple[str, int]:
        """Returns the summary and how many rounds it took (0 when there was nothing to summarise).

        Without ``cite``; with it, the answer keeps the model's ``[n]`` markers (see :meth:`cited`).
        """
        cited = self.cited(items)
        return cited.answer, cited.rounds

    def _final_instruction(self) -> str:
        return self._final_instruction_citing() if self.cite else self.options.summary_prompt

    def _final_instruction_citing(self) -> str:
        return f"{self.options.summary_prompt}\n{CITE_INSTRUCTION}"

    def _numbered(self, items: Sequence[Item]) -> list[Item]:
        if not self.cite:
            return list(items)
        return [(start, end, f"[{n}] {text}") for n, (start, end, text) in enumerate(items, 1)]

    def fit_prompt(self, instruction: str, items: Sequence[Item]) -> str:
        """One prompt of ``items`` and ``instruction`` within the limit, items cut to fit if need be
        (the budgeting ``--ask`` reuses)."""
        items = list(items)
        if self._tokens(instruction, items) > self.limit:
            items = self._fit(instruction, items)
        return self._prompt(instruction, items)

    def cited(self, items: Sequence[Item]) -> CitedSummary:
        """The summary, its rounds and the items of its final prompt (numbered there with ``cite``).

        Why it always ends, in a bounded number of calls: each round either sends the final
        prompt, or groups items cut to half the room, so every group but the last holds two
        items or more and the list at least halves; when the groups would be one (or the list
        would not shrink, for an answer that cannot be cut by words), the items are cut until
        they fit the final prompt instead. ``n`` items thus take at most ``ceil(log2(n)) + 1``
        rounds and ``n/2 + n/4 + ... + 1 + 1 < 2 * n`` prompts.
        """
        items = [item for item in items if item[2].strip()]
        if not items:
            return CitedSummary("", 0)
        rounds = 0
        final = self._final_instruction()
        while True:
            rounds += 1
            if self._tokens(final, self._numbered(items)) <= self.limit:
                answer = self.complete([self._prompt(final, self._numbered(items))])[0]
                return CitedSummary(answer, rounds, items if self.cite else [])
            groups = self._groups(items)
            if len(groups) == 1 or len(groups) >= len(items):
                # A last part summary would only be summarised again: cut the items to fit the
                # final prompt, which also ends the loop when a lone item is an over-long answer.
                return self._final_fitted(items, rounds)
            texts = self.complete([self._prompt(PART_SUMMARY_PROMPT, group) for group in groups])
            items = [(group[0][0], group[-1][1], text) for group, text in zip(groups, texts)]

    def _final_fitted(self, items: list[Item], rounds: int) -> CitedSummary:
        """The final prompt with its items cut to fit; without citations when even the cut numbered
        items cannot fit beside the longer instruction (a tiny ``summary_max_prompt_tokens``)."""
        final = self._final_instruction()
        fitted = self._fit(final, self._numbered(items))
        if self.cite and self._tokens(final, fitted) > self.limit:
            plain = self._fit(self.options.summary_prompt, items)
            return CitedSummary(self.complete([self._prompt(self.options.summary_prompt, plain)])[0], rounds, [])
        return CitedSummary(self.complete([self._prompt(final, fitted)])[0], rounds, items if self.cite else [])

    def _fit(self, instruction: str, items: list[Item]) -> list[Item]:
        """``items`` each cut to an equal share of the room, smaller shares until the prompt fits."""
        budget = max(1, (self.limit - self._tokens(instruction, [])) // len(items))
        while True:
            fitted = [self._shorten(item, budget) for item in items]
            if budget <= 1 or self._tokens(instruction, fitted) <= self.limit:
                return fitted
            budget = budget * 3 // 4

    def _groups(self, items: list[Item]) -> list[list[Item]]:
        """Consecutive groups whose part-summary prompts fit the limit.

        Each item is first cut to fit half the room, so that any two fit together: every group
        but possibly the last holds two items or more, and each round at least halves the list.
        """
        room = self.limit - max(self._tokens(PART_SUMMARY_PROMPT, []), self._tokens(self._final_instruction(), []))
        items = [self._shorten(item, room // 2) for item in items]
        groups: list[list[Item]] = [[]]
        for item in items:
            if groups[-1] and self._tokens(PART_SUMMARY_PROMPT, groups[-1] + [item]) > self.limit:
                groups.append([])
            groups[-1].append(item)
        return groups

    def _shorten(self, item: Item, budget: int) -> Item:
        """Drop words from the end of the text until its line takes at most ``budget`` tokens.

        A text that is one long word (an answer without spaces) loses characters instead, so
        any text can be cut down to its budget.
        """
        start, end, text = item
        words = text.split()
        while len(words) > 1 and self._line_tokens((start, end, " ".join(words))) > budget:
            words = words[: max(1, len(words) * 3 // 4)]
        text = " ".join(words)
        while len(text) > 1 and self._line_tokens((start, end, text)) > budget:
            text = text[: max(1, len(text) * 3 // 4)]
        return start, end, text

    def _prompt(self, instruction: str, items: Sequence[Item]) -> str:
        return summary_prompt(instruction, items, time_aware=self.options.time_aware)

    def _tokens(self, instruction: str, items: Sequence[Item]) -> int:
        return self.model.count_tokens(self._prompt(instruction, items))

    def _line_tokens(self, item: Item) -> int:
        return self._tokens("", [item]) - self._tokens("", [])


def ground(cited: CitedSummary, batches: Sequence[tuple[int, float, float]]) -> tuple[str, list[dict], int]:
    """The clean summary, its evidence and the citations dropped, checked against what exists.

    Args:
        cited: the final answer and the items its prompt numbered.
        batches: ``(batch_id, start, end)`` of the described batches.

    Returns:
        the summary without ``[n]`` markers; ``summary_evidence``, one
        ``{"text", "batches", "start", "end"}`` per sentence (the batch ids the sentence's cited
        items cover, and their time span; no batches when it cited nothing that exists); and the
        number of citations dropped because no item has that number.
    """
    sentences = split_citations(cited.answer)
    evidence, dropped = [], 0
    for text, numbers in sentences:
        ids: list[int] = []
        for number in numbers:
            if not 1 <= number <= len(cited.items):
                dropped += 1
                continue
            start, end, _ = cited.items[number - 1]
            ids.extend(b for b, b_start, b_end in batches if start <= b_start and b_end <= end and b not in ids)
        spans = [(b_start, b_end) for b, b_start, b_end in batches if b in ids]
        evidence.append(
            {
                "text": text,
                "batches": sorted(ids),
                "start": min((s for s, _ in spans), default=None),
                "end": max((e for _, e in spans), default=None),
            }
        )
    return " ".join(text for text, _ in sentences), evidence, dropped
