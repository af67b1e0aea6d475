"""Parity with the upstream DeepSeek-VL2 reference outputs stored as fixtures.

Every case under ``$PARITY_FIXTURES/cases/*.json`` (default: tests/fixtures/deepseek_vl2_reference)
is checked stage by stage in float32 on CPU: processor tensors exactly (pixels within 1e-5),
vision/projector/embeddings within 1e-5, hidden states and logits within 1e-4, greedy ids equal.
The model stages are fed the stored processor tensors, so a failure points at one stage.
Another device or dtype: see ``accelerator`` (bfloat16 compares relative to the reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerator import DEVICE, DTYPE, EXACT, assert_close
from helpers import FIXTURES
from PIL import Image
from safetensors.torch import load_file

from videocaption.deepseek_vl2 import DeepseekVL2, generate
from videocaption.deepseek_vl2.generation import position_ids_from_mask

CASES = sorted((FIXTURES / "cases").glob("*.json"))

EMBED_TOL = 1e-5
HIDDEN_TOL = 1e-4
LOGIT_TOL = 1e-4
PIXEL_TOL = 1e-5


@pytest.fixture(scope="module")
def runtime() -> DeepseekVL2:
    return DeepseekVL2.from_pretrained(FIXTURES / "model", device=str(DEVICE), dtype=str(DTYPE).removeprefix("torch."))


class Case:
    """One reference case: its JSON, its tensors and the PIL images of each conversation."""

    def __init__(self, path: Path) -> None:
        self.name = path.stem
        self.meta = json.loads(path.read_text())
        self.ref = load_file(str(path.with_suffix(".safetensors")))
        self.conversations = [
            [{"role": m["role"], "content": m["content"]} for m in conv] for conv in self.meta["conversations"]
        ]
        self.images = [
            [Image.open(path.parent / name).convert("RGB") for m in conv for name in m.get("images", [])]
            for conv in self.meta["conversations"]
        ]

    def expected_pixels(self) -> torch.Tensor:
        """The processor's float images [B, max_tiles, 3, S, S], rebuilt from the uint8 tiles."""
        tiles = self.ref["image_tiles_u8"]
        counts = [s["num_tiles"] for s in self.meta["samples"]]
        out = torch.zeros(len(counts), max(counts), *tiles.shape[1:])
        start = 0
        for b, n in enumerate(counts):
            out[b, :n] = (tiles[start : start + n].float() / 255 - 0.5) / 0.5
            start += n
        return out


@pytest.fixture(scope="module", params=CASES, ids=[c.stem for c in CASES])
def case(request) -> Case:
    return Case(request.param)


def test_fixture_cases_found():
    assert CASES, f"no parity cases under {FIXTURES / 'cases'}"


def test_processor(runtime: DeepseekVL2, case: Case):
    processor = runtime.processor
    batch = processor.batchify(
        [processor.process_one(conv, imgs, system_prompt="") for conv, imgs in zip(case.conversations, case.images)]
    )
    ref = case.ref
    for key in ("input_ids", "attention_mask", "images_seq_mask", "images_spatial_crop", "labels"):
        ours = getattr(batch, key)
        assert ours.dtype == ref[key].dtype, key
        assert torch.equal(ours, ref[key]), key
    assert batch.sft_format == case.meta["sft_format"]
    assert [s for s in batch.num_image_tokens] == [s["num_image_tokens"] for s in case.meta["samples"]]
    assert batch.seq_lens == case.meta["seq_lens"]
    assert_close(batch.images, case.expected_pixels(), PIXEL_TOL, "pixels")  # the processor works in float32 on CPU
    # The token count the pipeline plans with must equal what the processor makes.
    for conv, imgs, n in zip(case.conversations, case.images, case.meta["seq_lens"]):
        assert processor.count_tokens(conv, [im.size for im in imgs]) == n


@pytest.fixture(scope="module")
def outputs(runtime: DeepseekVL2, case: Case) -> dict[str, torch.Tensor]:
    """Our model's stage outputs, each stage fed the stored inputs of the previous one."""
    model = runtime.model
    ref = {
        key: value.to(DEVICE, dtype=DTYPE if value.is_floating_point() else value.dtype)
        for key, value in case.ref.items()
    }
    pixels = case.expected_pixels().to(DEVICE, DTYPE)
    mask = ref["attention_mask"]
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        if "vision_features" in ref:
            out["vision_features"] = model.vision(pixels.flatten(0, 1)[: ref["vision_features"].shape[0]])
        out["image_embeds"] = model.encode_images(pixels, ref["images_spatial_crop"])
        out["inputs_embeds"] = model.prepare_inputs_embeds(
            ref["input_ids"], pixels, ref["images_seq_mask"], ref["images_spatial_crop"]
        )
        out["position_ids"] = position_ids_from_mask(mask)
        hidden = model.language.model(ref["inputs_embeds"], out["position_ids"], mask)
        out["last_hidden_state"] = hidden
        positions = ref["text_positions"]
        out["logits_text"] = model.language.logits(hidden[positions[:, 0], positions[:, 1]])
        out["logits_last"] = model.language.logits(hidden[:, -1])
        if "last_hidden_state_arange_positions" in ref:
            arange = torch.arange(mask.shape[1], device=DEVICE).expand_as(mask)
            out["last_hidden_state_arange_positions"] = model.language.model(ref["inputs_embeds"], arange, mask)
        gen = generate(
            model.language,
            ref["inputs_embeds"],
            mask,
            max_new_tokens=case.meta["generation"]["max_new_tokens"],
            eos_token_id=case.meta["generation"]["eos_token_id"],
            output_scores=True,
        )
        out["generated_ids"] = gen.sequences
        out["generate_step_logits"] = torch.stack(gen.scores)
    return {key: value.cpu() for key, value in out.items()}


def test_vision_and_embeddings(case: Case, outputs):
    if "vision_features" in case.ref:
        assert_close(outputs["vision_features"], case.ref["vision_features"], EMBED_TOL, "vision_features")
    assert_close(outputs["image_embeds"], case.ref["image_embeds"], EMBED_TOL, "image_embeds")
    assert_close(outputs["inputs_embeds"], case.ref["inputs_embeds"], EMBED_TOL, "inputs_embeds")


def test_language_model(case: Case, outputs):
    ref, real = case.ref, case.ref["attention_mask"]
    assert torch.equal(outputs["position_ids"], ref["position_ids"])
    # Padding rows are not compared: the reference attends uniformly there, we attend to self.
    assert_close(outputs["last_hidden_state"][real], ref["last_hidden_state"][real], HIDDEN_TOL, "last_hidden_state")
    assert_close(outputs["logits_text"], ref["logits_text"], LOGIT_TOL, "logits_text")
    assert_close(outputs["logits_last"], ref["logits_last"], LOGIT_TOL, "logits_last")
    if "last_hidden_state_arange_positions" in ref:
        assert_close(
            outputs["last_hidden_state_arange_positions"][real],
            ref["last_hidden_state_arange_positions"][real],
            HIDDEN_TOL,
            "arange positions",
        )


def test_greedy_generation(case: Case, outputs):
    if EXACT:
        assert torch.equal(outputs["generated_ids"], case.ref["generated_ids"])
        assert_close(outputs["generate_step_logits"], case.ref["generate_step_logits"], LOGIT_TOL, "step logits")
    else:  # later steps follow ids that may differ after a near-tie: only the first step compares
        assert_close(outputs["generate_step_logits"][0], case.ref["generate_step_logits"][0], LOGIT_TOL, "first step")


def test_runtime_end_to_end(runtime: DeepseekVL2, case: Case):
    """PNG files and prompt text in, the reference's greedy text out (processor + model + decode)."""
    generation = case.meta["generation"]
    prompts = [conv[0]["content"] for conv in case.conversations]
    texts = runtime.describe_batch(list(zip(case.images, prompts)), max_new_tokens=generation["max_new_tokens"])
    if EXACT:
        assert texts == [t.strip() for t in generation["generated_text"]]
    assert len(texts) == len(prompts) and all(isinstance(text, str) for text in texts)
    for conv, imgs, n in zip(case.conversations, case.images, case.meta["seq_lens"]):
        assert runtime.count_tokens(conv[0]["content"], [im.size for im in imgs]) == n
