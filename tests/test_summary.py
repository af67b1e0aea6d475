"""The summary pass stays within its prompt limit, in rounds, on long videos."""

import json

import pytest
from helpers import FAST, make_clip

from videocaption.backends import load_model
from videocaption.captioning.summary import Summarizer
from videocaption.deepseek_vl2 import DeepseekVL2
from videocaption.errors import InvalidOptionError
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions

WORDS = "a rabbit walks slowly across the green meadow while birds fly over the old oak tree".split()


@pytest.fixture(scope="module")
def model():
    return load_model(CaptionOptions(**FAST))


def items(count: int, words: int = 24):
    return [(4.0 * i, 4.0 * i + 3, " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))) for i in range(count)]


def test_everything_that_fits_is_one_round(model):
    prompts = []
    summarize = Summarizer(
        model, CaptionOptions(**FAST), lambda p: prompts.extend(p) or model.complete_batch(p, max_new_tokens=8)
    )
    summary, rounds = summarize(items(5))
    assert rounds == 1 and len(prompts) == 1 and summary


@pytest.mark.slow
def test_descriptions_that_do_not_fit_are_summarised_in_rounds_within_the_limit(model):
    options = CaptionOptions(**FAST, summary_max_prompt_tokens=150)
    prompts = []

    def complete(batch):
        prompts.extend(batch)
        return model.complete_batch(batch, max_new_tokens=8)

    summary, rounds = Summarizer(model, options, complete)(items(40))
    assert rounds >= 3
    assert summary
    assert max(model.count_tokens(p) for p in prompts) <= 150
    assert len(prompts) < 40  # grouped, not one call per description


def test_one_description_longer_than_the_limit_is_cut(model):
    options = CaptionOptions(**FAST, summary_max_prompt_tokens=120)
    prompts = []
    Summarizer(model, options, lambda p: prompts.extend(p) or ["short"] * len(p))(items(3, words=400))
    assert max(model.count_tokens(p) for p in prompts) <= 120


def test_a_limit_too_small_for_the_instruction_is_refused(model):
    with pytest.raises(InvalidOptionError, match="summary prompts are limited to 10 tokens"):
        Summarizer(model, CaptionOptions(**FAST, summary_max_prompt_tokens=10), lambda p: p)


@pytest.mark.slow
def test_ten_minute_video_keeps_every_prompt_under_the_limit(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "ten_minutes.mp4", duration=600, size="160x120", rate=1)
    limit = 160
    counts: list[tuple[str, int]] = []
    model = load_model(CaptionOptions(**FAST))
    original_complete, original_describe = DeepseekVL2.complete_batch, DeepseekVL2.describe_batch

    def complete_batch(self, prompts, **kwargs):
        counts.extend(("text", self.count_tokens(p)) for p in prompts)
        return original_complete(self, prompts, **kwargs)

    def describe_batch(self, requests, **kwargs):
        counts.extend(("image", self.count_tokens(p, [im.size for im in ims])) for ims, p in requests)
        return original_describe(self, requests, **kwargs)

    monkeypatch.setattr(DeepseekVL2, "complete_batch", complete_batch)
    monkeypatch.setattr(DeepseekVL2, "describe_batch", describe_batch)
    options = CaptionOptions(
        **FAST, fps=0.1, batch_size=8, summary_max_prompt_tokens=limit, result_path=str(tmp_path / "result.json")
    )
    result = run_caption_graph(clip, options).to_dict()
    assert result["frames_analysed"] == 60
    assert result["batches"][-1]["end_time"] == pytest.approx(590.0)
    assert result["summary_rounds"] > 1
    text_counts = [n for kind, n in counts if kind == "text"]
    assert max(text_counts) <= limit
    assert max(n for kind, n in counts if kind == "image") + FAST["max_new_tokens"] <= model.context_length
    assert json.loads((tmp_path / "result.json").read_text())["summary_rounds"] == result["summary_rounds"]


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["word " * 3000, "x" * 12000], ids=["words", "one-long-word"])
def test_answers_as_long_as_allowed_end_in_a_bounded_number_of_calls(model, answer):
    """Issue 26 #2: max_new_tokens half the context and answers that long never ended (a request storm)."""
    import math

    options = CaptionOptions(**{**FAST, "max_new_tokens": model.context_length // 2})
    prompts = []

    def complete(batch):
        prompts.extend(batch)
        assert len(prompts) < 1000, "the summary pass does not end"
        return [answer] * len(batch)

    summarize = Summarizer(model, options, complete)
    for count in (1, 2, 3, 17):
        prompts.clear()
        summary, rounds = summarize(items(count, words=1500))
        assert summary == answer
        assert rounds <= math.ceil(math.log2(count)) + 1 and len(prompts) < 2 * count + 1
        assert max(model.count_tokens(p) for p in prompts) <= summarize.limit


def test_a_cited_summary_numbers_the_final_items_and_keeps_the_limit(model):
    """Grounded summaries (issue 24): the final prompt numbers what it gives, within the limit, in rounds too."""
    from videocaption.captioning.summary import CITE_INSTRUCTION

    prompts = []

    def complete(batch):
        prompts.extend(batch)
        return ["It rests on the first part [1]."] * len(batch)

    # So tight that even cut numbered items do not fit beside the longer instruction: not cited.
    tight = Summarizer(model, CaptionOptions(**FAST, summary_max_prompt_tokens=150), complete, cite=True)
    assert tight.cited(items(12)).items == []
    assert max(model.count_tokens(p) for p in prompts) <= 150
    prompts.clear()
    options = CaptionOptions(**FAST, summary_max_prompt_tokens=300)
    cited = Summarizer(model, options, complete, cite=True).cited(items(24))
    assert cited.rounds > 1 and cited.answer == "It rests on the first part [1]."
    assert max(model.count_tokens(p) for p in prompts) <= 300
    final = prompts[-1]
    assert CITE_INSTRUCTION in final and "[1] " in final and f"[{len(cited.items)}] " in final
    assert all(CITE_INSTRUCTION not in p for p in prompts[:-1])  # part summaries cite nothing
    # The items of the final prompt are part summaries: their spans cover the batches' spans.
    assert cited.items[0][0] == 0.0 and cited.items[-1][1] == items(24)[-1][1]


def test_a_limit_too_small_for_citing_summarises_plainly_instead_of_refusing(model):
    from videocaption.captioning.summary import CITE_INSTRUCTION, PART_SUMMARY_PROMPT

    plain = Summarizer(model, CaptionOptions(**FAST), lambda p: p)
    instruction = max(plain._tokens(plain.options.summary_prompt, []), plain._tokens(PART_SUMMARY_PROMPT, []))
    smallest = instruction + 48  # the smallest limit accepted before grounded summaries
    options = CaptionOptions(**FAST, summary_max_prompt_tokens=smallest)
    prompts = []
    cited = Summarizer(model, options, lambda p: prompts.extend(p) or ["ok [1]"] * len(p), cite=True).cited(items(2))
    assert cited.answer == "ok [1]" and cited.items == []  # nothing numbered: [1] cites nothing
    assert prompts and all(CITE_INSTRUCTION not in p for p in prompts)
    assert max(model.count_tokens(p) for p in prompts) <= smallest
