"""``--ask``: the best segments, given to the model as numbered evidence; an answer that cites them.

The question retrieves segments by BM25 (:mod:`videocaption.search.index`); they go to the
configured model (any backend, text only) numbered ``[1]``, ``[2]``, ... with their video and
time, within the model's context (the summary pass's budgeting cuts long ones). The answer's
``[n]`` markers are then checked in code: an answer that cites nothing, or a number that was not
given, is marked unsupported; it is never trusted for saying it is supported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from videocaption.backends import VisionLanguageModel
from videocaption.captioning.summary import CITATION, Summarizer, cited_numbers
from videocaption.options import CaptionOptions
from videocaption.prompts import speech_line
from videocaption.search.index import Hit, SearchIndex

ASK_INSTRUCTION = (
    "Above are numbered moments found in a library of captioned videos. Answer the question below "
    "using only these moments. After each claim, cite in square brackets the numbers of the moments "
    "it rests on, e.g. [1] or [2, 3]. If the moments do not answer it, say so.\nQuestion: {question}"
)


@dataclass
class Answer:
    """The model's answer, the moments it was given (numbered from 1) and what it cites of them."""

    question: str
    text: str
    hits: list[Hit]
    cited: list[int] = field(default_factory=list)  # the valid numbers the answer cites, in order
    invalid: list[int] = field(default_factory=list)  # numbers cited that name no moment given

    @property
    def supported(self) -> bool:
        """It cites at least one moment given, and no number that was not."""
        return bool(self.cited) and not self.invalid

    def citations(self) -> list[dict]:
        """Each cited moment: ``{n, video, start, end, batch_id}``, in the order first cited."""
        return [
            {
                "n": n,
                "video": self.hits[n - 1].segment.path,
                "start": self.hits[n - 1].segment.start_time,
                "end": self.hits[n - 1].segment.end_time,
                "batch_id": self.hits[n - 1].segment.batch_id,
            }
            for n in self.cited
        ]

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "supported": self.supported,
            "citations": self.citations(),
            "invalid_citations": self.invalid,
        }


def check_citations(text: str, given: int) -> tuple[list[int], list[int]]:
    """The numbers ``text`` cites in ``[n]`` / ``[n, m]`` markers: those in 1..given, and the others."""
    cited, invalid = [], []
    for match in CITATION.finditer(text):
        for number in cited_numbers(match.group(1)):
            target = cited if 1 <= number <= given else invalid
            if number not in target:
                target.append(number)
    return cited, invalid


def moment_text(n: int, hit: Hit) -> str:
    """How a retrieved moment is put to the model: its number, video, description and speech."""
    segment = hit.segment
    text = f"[{n}] {Path(segment.path).name}: {segment.description}"
    return text + (f" {speech_line(segment.speech)}" if segment.speech else "")


def ask(
    question: str,
    index: SearchIndex,
    model: VisionLanguageModel,
    options: CaptionOptions,
    *,
    top: int = 8,
    retrieve: Callable[[str, int], list[Hit]] | None = None,
) -> Answer:
    """Retrieve the ``top`` moments for ``question`` and have ``model`` answer from them, citing them.

    Args:
        retrieve: ``(question, top) -> hits``; by default the index's BM25 search (the hybrid
            search with ``--embed-model``).
    """
    hits = (retrieve or index.search)(question, top)
    if not hits:  # nothing to rest an answer on: the model is not asked
        return Answer(question, "No moment in the index matches the question.", [])
    instruction = ASK_INSTRUCTION.format(question=" ".join(question.split()))

    def complete(prompts: list[str]) -> list[str]:
        return list(model.complete_batch(prompts, max_new_tokens=options.max_new_tokens))

    budget = Summarizer(model, options.replace(summary_prompt=instruction), complete)
    items = [(hit.segment.start_time, hit.segment.end_time, moment_text(n, hit)) for n, hit in enumerate(hits, 1)]
    text = complete([budget.fit_prompt(instruction, items)])[0].strip()
    cited, invalid = check_citations(text, len(hits))
    return Answer(question, text, hits, cited, invalid)
