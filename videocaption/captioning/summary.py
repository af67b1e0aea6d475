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

from collections.abc import Callable, Sequence

from videocaption.backends import VisionLanguageModel
from videocaption.errors import InvalidOptionError
from videocaption.options import CaptionOptions
from videocaption.prompts import PART_SUMMARY_PROMPT, summary_prompt

Item = tuple[float, float, str]  # (start seconds, end seconds, text)
Complete = Callable[[list[str]], list[str]]

# Room a group needs beyond the instruction: two short descriptions with their time labels.
MIN_ROOM_FOR_DESCRIPTIONS = 48


class Summarizer:
    """Summarises ``(start, end, text)`` items with prompts of at most ``limit`` tokens.

    Args:
        model: counts tokens.
        options: the prompts, ``max_new_tokens`` and ``summary_max_prompt_tokens``.
        complete: runs text-only prompts (batched) and returns the answers.

    Raises:
        InvalidOptionError: the limit leaves no room for descriptions next to the instruction.
    """

    def __init__(self, model: VisionLanguageModel, options: CaptionOptions, complete: Complete) -> None:
        self.model = model
        self.options = options
        self.complete = complete
        self.limit = model.context_length - options.max_new_tokens
        if options.summary_max_prompt_tokens is not None:
            self.limit = min(self.limit, options.summary_max_prompt_tokens)
        needed = max(self._tokens(self.options.summary_prompt, []), self._tokens(PART_SUMMARY_PROMPT, []))
        if self.limit < needed + MIN_ROOM_FOR_DESCRIPTIONS:
            raise InvalidOptionError(
                f"summary prompts are limited to {self.limit} tokens, but the instruction alone takes "
                f"{needed}; allow at least {needed + MIN_ROOM_FOR_DESCRIPTIONS} "
                "(summary_max_prompt_tokens, or a smaller max_new_tokens)"
            )

    def __call__(self, items: Sequence[Item]) -> tuple[str, int]:
        """Returns the summary and how many rounds it took (0 when there was nothing to summarise).

        Why it always ends, in a bounded number of calls: each round either sends the final
        prompt, or groups items cut to half the room, so every group but the last holds two
        items or more and the list at least halves; when the groups would be one (or the list
        would not shrink, for an answer that cannot be cut by words), the items are cut until
        they fit the final prompt instead. ``n`` items thus take at most ``ceil(log2(n)) + 1``
        rounds and ``n/2 + n/4 + ... + 1 + 1 < 2 * n`` prompts.
        """
        items = [item for item in items if item[2].strip()]
        if not items:
            return "", 0
        rounds = 0
        while True:
            rounds += 1
            if self._tokens(self.options.summary_prompt, items) <= self.limit:
                return self.complete([self._prompt(self.options.summary_prompt, items)])[0], rounds
            groups = self._groups(items)
            if len(groups) == 1 or len(groups) >= len(items):
                # A last part summary would only be summarised again: cut the items to fit the
                # final prompt, which also ends the loop when a lone item is an over-long answer.
                fitted = self._fit(self.options.summary_prompt, items)
                return self.complete([self._prompt(self.options.summary_prompt, fitted)])[0], rounds
            texts = self.complete([self._prompt(PART_SUMMARY_PROMPT, group) for group in groups])
            items = [(group[0][0], group[-1][1], text) for group, text in zip(groups, texts)]

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
        room = self.limit - max(self._tokens(PART_SUMMARY_PROMPT, []), self._tokens(self.options.summary_prompt, []))
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
