"""Batched generation gives every conversation the numbers of running it alone.

Conversations of different lengths and image counts (none, one, two, four) are left-padded into
one batch; per step, each row's logits must match its solo run within 1e-4 (float32) and the
greedy ids must be identical, also when some rows stop at eos while the others go on.
"""

from __future__ import annotations

import pytest
import torch
from accelerator import DEVICE, DTYPE, EXACT, assert_close
from helpers import FIXTURES
from PIL import Image

from videocaption.deepseek_vl2 import DeepseekVL2, generate

LOGIT_TOL = 1e-4
STEPS = 10


def frame(name: str) -> Image.Image:
    return Image.open(FIXTURES / "cases" / name).convert("RGB")


@pytest.fixture(scope="module")
def runtime() -> DeepseekVL2:
    return DeepseekVL2.from_pretrained(FIXTURES / "model", device=str(DEVICE), dtype=str(DTYPE).removeprefix("torch."))


@pytest.fixture(scope="module")
def requests() -> list[tuple[list[Image.Image], str]]:
    return [
        ([frame("bikes_t4.5_640x272.png")], "<image>\nDescribe the scene."),
        ([], "Write a title for a video about a rabbit in a forest."),
        (
            [frame("bunny_t4.2_320x180.png"), frame("bikes_t7.5_320x136.png")],
            "<image>\n<image>\nWhich frame shows the rabbit? Answer in a few words.",
        ),
        (
            [
                frame(n)
                for n in (
                    "bunny_t1.0_640x360.png",
                    "bikes_t1.5_640x272.png",
                    "bunny_t4.2_320x180.png",
                    "bikes_t7.5_320x136.png",
                )
            ],
            "This is image_1: <image>\nThis is image_2: <image>\nThis is image_3: <image>\nThis is image_4: <image>\n Summarize.",
        ),
    ]


def run(runtime: DeepseekVL2, requests, *, eos_token_id: int, steps: int = STEPS):
    """Generate for ``requests`` as one batch; return the output and the batch's prompt lengths."""
    batch = runtime._batch([(list(images), prompt) for images, prompt in requests]).to(
        runtime.device, dtype=runtime.dtype
    )
    with torch.inference_mode():
        embeds = runtime.model.prepare_inputs_embeds(
            batch.input_ids, batch.images, batch.images_seq_mask, batch.images_spatial_crop
        )
        out = generate(
            runtime.model.language,
            embeds,
            batch.attention_mask,
            max_new_tokens=steps,
            eos_token_id=eos_token_id,
            output_scores=True,
        )
    return out, batch


def solo_runs(runtime, requests, eos_token_id):
    return [run(runtime, [request], eos_token_id=eos_token_id)[0] for request in requests]


def assert_rows_match_solo(batched, solos):
    if not EXACT:  # bfloat16: ids may flip on near-ties, so only the first step's logits compare
        for row, solo in enumerate(solos):
            assert_close(batched.scores[0][row], solo.scores[0][0], LOGIT_TOL, f"row {row}")
        return
    for row, solo in enumerate(solos):
        n = solo.lengths[0]
        assert batched.lengths[row] == n, row
        # ids up to and including eos (if any) are equal; after it both hold the pad id
        assert torch.equal(batched.sequences[row], solo.sequences[0]), row
        for step, scores in enumerate(solo.scores):
            diff = (batched.scores[step][row] - scores[0]).abs().max().item()
            assert diff < LOGIT_TOL, (row, step, diff)
        for scores in batched.scores[len(solo.scores) :]:  # the row had left the batch
            assert torch.isnan(scores[row]).all()


@pytest.fixture(scope="module")
def free_runs(runtime, requests):
    """The batch and each conversation alone, stopping only at the real eos."""
    eos = runtime.processor.eos_id
    batched, batch = run(runtime, requests, eos_token_id=eos)
    return batched, batch, solo_runs(runtime, requests, eos)


def test_batch_is_left_padded_with_different_lengths(requests, free_runs):
    _, batch, _ = free_runs
    assert len(set(batch.seq_lens)) == len(requests)  # all lengths differ
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[:, 0].all()
    assert batch.images_spatial_crop[1].sum() == 0  # the text-only row has no image


def test_batched_equals_one_by_one(free_runs):
    batched, _, solos = free_runs
    assert_rows_match_solo(batched, solos)


@pytest.mark.skipif(not EXACT, reason="follows greedy ids, which near-ties flip in bfloat16")
def test_rows_that_hit_eos_stop_while_others_continue(runtime, requests, free_runs):
    # The weights are random, so pick as "eos" a token that some rows produce early and not others.
    second = free_runs[0].sequences[:, 1].tolist()
    stopper = max(second, key=second.count)  # the most common second token: those rows stop after one token
    solos = solo_runs(runtime, requests, stopper)
    lengths = [s.lengths[0] for s in solos]
    assert 0 < min(lengths) < STEPS and max(lengths) == STEPS  # some rows stop mid-way, some run to the limit
    batched, _ = run(runtime, requests, eos_token_id=stopper)
    assert_rows_match_solo(batched, solos)


@pytest.mark.skipif(not EXACT, reason="compares greedy texts, which near-ties flip in bfloat16")
def test_describe_batch_equals_describe(runtime, requests):
    image_requests = [r for r in requests if r[0]]
    batched = runtime.describe_batch(image_requests, max_new_tokens=8)
    assert batched == [runtime.describe(images, prompt, max_new_tokens=8) for images, prompt in image_requests]
    texts = [prompt for images, prompt in requests if not images] + ["Summarize: a rabbit wakes up."]
    assert runtime.complete_batch(texts, max_new_tokens=8) == [runtime.complete(t, max_new_tokens=8) for t in texts]


def test_answers_carry_their_token_counts(runtime, requests, free_runs):
    batched, batch, _ = free_runs
    answers = runtime.describe_batch([r for r in requests if r[0]], max_new_tokens=STEPS)
    rows = [row for row, (images, _) in enumerate(requests) if images]
    for usage, row in zip(answers.usage, rows):
        images, prompt = requests[row]
        assert usage.prompt_tokens == batch.seq_lens[row] == runtime.count_tokens(prompt, [im.size for im in images])
        assert usage.image_tokens == int(batch.images_seq_mask[row].sum()) > 0
        if EXACT:
            assert usage.generated_tokens == batched.lengths[row]  # stopped at the same eos, or at the limit
    text = runtime.complete_batch([requests[1][1]], max_new_tokens=STEPS)
    assert text.usage[0].image_tokens == 0 and text.usage[0].prompt_tokens == batch.seq_lens[1]


def test_a_second_call_about_the_same_frames_reuses_the_vision_features(monkeypatch):
    # With --events each batch is asked twice about the same frames: the vision tower (most of a
    # prompt's cost) must run once, and the answers must be those of a runtime that runs it again.
    fresh = lambda: DeepseekVL2.from_pretrained(  # noqa: E731
        FIXTURES / "model", device=str(DEVICE), dtype=str(DTYPE).removeprefix("torch.")
    )
    runtime, other = fresh(), fresh()
    encoded: list[int] = []
    encode = runtime.model.encode_images
    monkeypatch.setattr(runtime.model, "encode_images", lambda images, crop: encoded.append(1) or encode(images, crop))
    frames = [frame("bunny_t4.2_320x180.png"), frame("bikes_t7.5_320x136.png")]
    first = runtime.describe(frames, "<image>\n<image>\nDescribe the scene.", max_new_tokens=4)
    second = runtime.describe(frames, "<image>\n<image>\nWhich frame shows a rabbit?", max_new_tokens=4)
    assert len(encoded) == 1
    assert second == other.describe(frames, "<image>\n<image>\nWhich frame shows a rabbit?", max_new_tokens=4)
    assert first == other.describe(frames, "<image>\n<image>\nDescribe the scene.", max_new_tokens=4)
    # Other frames (or the same frames in another order) are other features.
    runtime.describe(frames[::-1], "<image>\n<image>\nDescribe the scene.", max_new_tokens=4)
    runtime.describe(frames[:1], "<image>\nDescribe the scene.", max_new_tokens=4)
    runtime.complete("Write a title.", max_new_tokens=2)  # text only: no vision call at all
    assert len(encoded) == 3
