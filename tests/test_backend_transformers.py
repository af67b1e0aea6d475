"""The transformers backend on tiny random checkpoints of several families, built offline.

Idefics3 (SmolVLM's architecture) and LLaVA run everywhere; Qwen2-VL runs where torchvision is
installed (transformers 5 has no PIL variant of Qwen2-VL's video processor, which its
processor requires).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_vlms
from PIL import Image

from videocaption.backends import VisionLanguageModel, load_model
from videocaption.backends.transformers_backend import TransformersVLM
from videocaption.captioning.captioner import Captioner
from videocaption.errors import InvalidOptionError, ModelLoadError
from videocaption.options import CaptionOptions

FAMILIES = [
    "idefics3",
    "llava",
    pytest.param(
        "qwen2_vl",
        marks=pytest.mark.skipif(
            not tiny_vlms.torchvision_available(), reason="Qwen2-VL's processor needs torchvision (not installed)"
        ),
    ),
]
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlms")
    built = {}
    for name, build in tiny_vlms.BUILDERS.items():
        if name in tiny_vlms.NEEDS_TORCHVISION and not tiny_vlms.torchvision_available():
            continue
        built[name] = build(root / name)
    return built


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[str, TransformersVLM]:
    """One loaded model per family, through load_model (so through the options, like a run)."""
    return {
        name: load_model(CaptionOptions(backend="transformers", model=str(path), device="cpu"))
        for name, path in checkpoints.items()
    }


def frames(count: int, size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    """Distinct solid-colour frames (of slightly different sizes, as crops of videos are)."""
    return [Image.new("RGB", (size[0] + 8 * i, size[1]), (37 * i % 256, 90, 255 - 29 * i % 256)) for i in range(count)]


def requests_of(images: list[Image.Image]) -> list[tuple[list[Image.Image], str]]:
    """Prompts with 1 to 3 images each, placeholders at the start, in the middle and in between."""
    return [
        (images[0:2], "Frame 1 at 0:00.0: <image>\nFrame 2 at 0:01.0: <image>\nDescribe what happens."),
        (images[2:5], "A <image> then <image> and <image>. What changed?"),
        (images[5:6], "<image> Describe."),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_batch_equals_one_by_one(models: dict[str, TransformersVLM], family: str) -> None:
    model = models[family]
    requests = requests_of(frames(6))
    together = model.describe_batch(requests, max_new_tokens=MAX_NEW_TOKENS)
    alone = [model.describe_batch([request], max_new_tokens=MAX_NEW_TOKENS) for request in requests]
    assert together == [answers[0] for answers in alone]
    assert len(together) == len(requests) and all(isinstance(text, str) for text in together)
    assert all(text for text in together), "random weights still produce some text"
    # token counts: padding is not counted, so a prompt costs the same alone or in a batch
    assert together.usage == [answers.usage[0] for answers in alone]
    for (images, prompt), usage in zip(requests, together.usage):
        assert usage.prompt_tokens == model.count_tokens(prompt, [image.size for image in images])
        assert 0 < usage.image_tokens < usage.prompt_tokens
        assert 0 < usage.generated_tokens <= MAX_NEW_TOKENS


@pytest.mark.parametrize("family", FAMILIES)
def test_complete_batch_equals_one_by_one(models: dict[str, TransformersVLM], family: str) -> None:
    model = models[family]
    prompts = ["Summarize the video.", "Give the video described above a short title of at most ten words."]
    together = model.complete_batch(prompts, max_new_tokens=MAX_NEW_TOKENS)
    alone = [model.complete_batch([prompt], max_new_tokens=MAX_NEW_TOKENS) for prompt in prompts]
    assert together == [answers[0] for answers in alone]
    assert together.usage == [answers.usage[0] for answers in alone]
    assert [usage.prompt_tokens for usage in together.usage] == [model.count_tokens(prompt) for prompt in prompts]
    assert [usage.image_tokens for usage in together.usage] == [0, 0]
    assert model.complete_batch([], max_new_tokens=MAX_NEW_TOKENS) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_count_tokens_is_what_the_model_is_given(models: dict[str, TransformersVLM], family: str) -> None:
    model = models[family]
    images, prompt = requests_of(frames(6))[1]
    processor = model.processor
    inputs = processor(text=[model._chat_text(prompt, len(images))], images=[images], add_special_tokens=False)
    assert model.count_tokens(prompt, [image.size for image in images]) == len(inputs["input_ids"][0])
    text = "Summarize the video."
    templated = processor.apply_chat_template(  # transformers' own tokenizing path, for comparison
        [{"role": "user", "content": [{"type": "text", "text": text}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    assert model.count_tokens(text) == len(templated["input_ids"][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_are_bounded(models: dict[str, TransformersVLM], family: str) -> None:
    model = models[family]
    per_image = model.max_image_tokens(1)
    assert per_image > 0 and model.max_image_tokens(3) == 3 * per_image
    base = model.count_tokens("")
    for size in [(1920, 1080), (1080, 1920), (4000, 3000), (64, 48)]:
        assert model.count_tokens("<image>", [size]) - base <= per_image


def test_prepare_image_shrinks_large_frames_only(models: dict[str, TransformersVLM]) -> None:
    model = models["llava"]
    small = Image.new("RGB", (640, 360))
    assert model.prepare_image(small, 4) is small
    assert model.prepare_image(Image.new("RGB", (1920, 1080)), 4).size == (1024, 576)


def test_protocol_name_and_context(models: dict[str, TransformersVLM], checkpoints: dict[str, Path]) -> None:
    for family, model in models.items():
        assert isinstance(model, VisionLanguageModel)
        assert model.name == str(checkpoints[family])
        assert model.context_length == 2048  # the tiny text configs' max_position_embeddings
    # load_model shares one instance per configuration
    again = load_model(CaptionOptions(backend="transformers", model=str(checkpoints["llava"]), device="cpu"))
    assert again is models["llava"]


def test_captioner_runs_on_the_transformers_backend(models: dict[str, TransformersVLM]) -> None:
    options = CaptionOptions(
        backend="transformers",
        model=models["idefics3"].name,
        device="cpu",
        batch_size=2,
        multithreading=True,
        max_threads=2,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    captioner = Captioner(options, models["idefics3"])
    for index, image in enumerate(frames(5)):
        captioner.add(image, float(index))
    result = captioner.finish()
    assert [batch.frames for batch in result.batches] == [2, 2, 1]
    assert result.complete and all(batch.description for batch in result.batches)
    assert isinstance(result.summary, str) and isinstance(result.video_title, str)


def test_missing_checkpoint_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load"):
        TransformersVLM.from_pretrained(str(tmp_path / "nothing-here"), device="cpu")


def test_an_unavailable_device_is_refused() -> None:
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InvalidOptionError, match="CUDA is not available"):
            TransformersVLM.from_pretrained("unused", device="cuda")
