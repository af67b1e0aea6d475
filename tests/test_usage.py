"""The work a run cost: token counts per batch and in total, in result.json."""

import pytest
from helpers import FAST
from PIL import Image

from videocaption.backends import load_model
from videocaption.captioning.captioner import Captioner
from videocaption.options import CaptionOptions
from videocaption.prompts import batch_prompt
from videocaption.result import BatchCaption, CaptionResult
from videocaption.usage import Answers, Usage, usage_of


def batch(batch_id: int, seconds: float, **counts) -> BatchCaption:
    return BatchCaption(
        batch_id=batch_id,
        frames=2,
        start_time=2.0 * batch_id,
        end_time=2.0 * batch_id + 1,
        description="text",
        inference_time=seconds,
        **counts,
    )


def result(*batches: BatchCaption) -> dict:
    return CaptionResult(
        video_title="t", summary="s", batch_size=2, batches=list(batches), model="m", fps=1.0, turnaround_time=10.0
    ).to_dict()


def test_counts_per_batch_and_in_total():
    document = result(
        batch(1, 2.0, prompt_tokens=900, image_tokens=842, generated_tokens=40),
        batch(2, 3.0, prompt_tokens=880, image_tokens=842, generated_tokens=60),
    )
    assert document["batches"][0]["usage"] == {
        "prompt_tokens": 900,
        "image_tokens": 842,
        "generated_tokens": 40,
        "tokens_per_second": 20.0,
    }
    assert document["usage"] == {
        "prompt_tokens": 1780,
        "image_tokens": 1684,
        "generated_tokens": 100,
        "tokens_per_second": 20.0,
    }  # 100 tokens in 5 s


def test_unknown_counts_are_left_out():
    # a backend that counts no tokens: the original schema only
    assert "usage" not in result(batch(1, 2.0)) and "usage" not in result(batch(1, 2.0))["batches"][0]
    # a server that reports tokens but cannot say which were images
    document = result(batch(1, 2.0, prompt_tokens=100, generated_tokens=10))
    assert document["usage"]["image_tokens"] is None and document["usage"]["generated_tokens"] == 10
    # a failed batch has no counts; the total is over the batches that have them
    document = result(batch(1, 2.0, prompt_tokens=100, image_tokens=50, generated_tokens=10), batch(2, 7.0))
    assert document["usage"]["prompt_tokens"] == 100 and document["usage"]["tokens_per_second"] == 5.0


def test_answers_are_a_list_of_texts_with_usage():
    answers = Answers(["a", "b"], [Usage(10, 2, 4), None])
    assert answers == ["a", "b"] and usage_of(answers) == [Usage(10, 2, 4), None]
    assert usage_of(["a", "b"]) == [None, None]  # a backend that returns plain lists
    assert Usage(10, 2, 4) + Usage(5, 1, 3) == Usage(15, 3, 7) and (Usage(10, 2, 4) + Usage(5, 1)).image_tokens is None
    with pytest.raises(ValueError, match="1 usage entries for 2 answers"):
        Answers(["a", "b"], [None])


def test_a_run_records_what_the_model_was_given(tmp_path):
    options = CaptionOptions(**FAST, batch_size=3, result_path=str(tmp_path / "result.json"))
    model = load_model(options)
    captioner = Captioner(options, model)
    frames = [Image.new("RGB", (320 + 16 * i, 180), (40 * i, 100, 200)) for i in range(5)]
    for second, frame in enumerate(frames):
        captioner.add(frame, float(second))
    document = captioner.finish().to_dict()
    batches = document["batches"]
    assert [b["frames"] for b in batches] == [3, 2]
    for described, group in zip(batches, (frames[:3], frames[3:])):
        prepared = [model.prepare_image(frame, options.batch_size) for frame in group]
        times = [float(described["start_time"] + i) for i in range(len(group))]
        prompt = batch_prompt(options.prompt, times, time_aware=True)
        usage = described["usage"]
        assert usage["prompt_tokens"] == model.count_tokens(prompt, [image.size for image in prepared])
        assert usage["image_tokens"] == len(group) * model.geometry.tiling_tokens(1, 1)  # one tile each
        assert 0 < usage["generated_tokens"] <= options.max_new_tokens and usage["tokens_per_second"] > 0
    assert document["usage"]["prompt_tokens"] == sum(b["usage"]["prompt_tokens"] for b in batches)
    assert document["usage"]["generated_tokens"] == sum(b["usage"]["generated_tokens"] for b in batches)
