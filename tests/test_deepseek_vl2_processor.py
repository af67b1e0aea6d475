"""Processor layout rules and the token counts the pipeline plans batches with."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import FIXTURES
from PIL import Image

from videocaption.deepseek_vl2 import DeepseekVL2, DeepseekVL2Processor, select_best_resolution
from videocaption.errors import ContextOverflowError


@pytest.fixture(scope="module")
def runtime() -> DeepseekVL2:
    return DeepseekVL2.from_pretrained(FIXTURES / "model", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def processor(runtime) -> DeepseekVL2Processor:
    return runtime.processor


def solid(size: tuple[int, int], color=(200, 30, 90), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, color).convert(mode)


def test_select_best_resolution(processor):
    candidates = processor.config.candidate_resolutions
    assert select_best_resolution((640, 360), candidates) == (768, 384)
    assert select_best_resolution((700, 560), candidates) == (768, 768)
    assert select_best_resolution((640, 272), candidates) == (768, 384)
    assert select_best_resolution((320, 180), candidates) == (384, 384)  # small: no upscaling gain
    assert select_best_resolution((200, 3000), candidates) == (384, 3072)  # ties on kept pixels: less waste
    assert select_best_resolution((300, 3400), candidates) == (384, 3456)


def test_image_token_counts(processor):
    assert processor.config.tokens_per_side == 14
    assert [processor.num_image_tokens(w, h) for w, h in [(1, 1), (2, 1), (2, 2), (4, 2)]] == [421, 617, 1023, 1807]


def test_max_image_tokens(runtime):
    # <= 2 images: the worst candidate (384x3456: 1 x 9 tiles) for each; > 2 images: global + one tile each
    assert runtime.max_image_tokens(0) == 0
    assert runtime.max_image_tokens(1) == 14 * 15 + 1 + (9 * 14) * (14 + 1) == 2101
    # 2 images: shrunk to at most 7 tiles each (1 x 7 the worst), so that two fit with room to spare
    assert runtime.max_image_tokens(2) == 2 * (14 * 15 + 1 + (7 * 14) * (14 + 1)) == 3362
    assert runtime.max_image_tokens(3) == 3 * 421
    assert runtime.max_image_tokens(8) == 8 * 421
    processor = runtime.processor
    for size in [(20, 2000), (2000, 20), (1000, 1000), (640, 360)]:  # the bound holds for real sizes
        assert processor.num_image_tokens(*processor.image_grid(size, cropping=True)) <= runtime.max_image_tokens(1)


def test_count_tokens_equals_processor_length(runtime):
    rng = random.Random(1234)
    prompts = {
        0: "Summarize the captions.",
        1: "<image>\nDescribe this frame.",
        2: "<image>\n<image>\nCompare.",
        3: "A: <image>\nB: <image>\nC: <image>\nWhat changes?",
        4: "<image><image><image><image> Tell a story.",
    }
    for _ in range(12):
        n = rng.choice(sorted(prompts))
        images = [runtime.prepare_image(solid((rng.randint(16, 1600), rng.randint(16, 1600))), n) for _ in range(n)]
        sizes = [image.size for image in images]
        sample = runtime.processor.process_one(runtime.processor.user_conversation(prompts[n]), images)
        assert runtime.count_tokens(prompts[n], sizes) == len(sample), sizes
        assert int(sample.images_seq_mask.sum()) == sum(sample.num_image_tokens)
        assert sample.images.shape[0] == sum(1 + w * h for w, h in sample.images_spatial_crop.tolist())
        assert sum(sample.num_image_tokens) <= runtime.max_image_tokens(n)


def test_two_image_prompts_shrink_frames_only_when_their_tiling_is_too_large(runtime):
    wide, strip = solid((1920, 1080)), solid((200, 3000))  # 4 x 2 and 1 x 9 tiles at full size
    assert runtime.prepare_image(wide, 1) is wide and runtime.prepare_image(strip, 1) is strip
    shrunk_wide, shrunk_strip = runtime.prepare_image(wide, 2), runtime.prepare_image(strip, 2)
    assert runtime.processor.image_grid(shrunk_wide.size, cropping=True) == (3, 2)
    assert runtime.processor.image_grid(shrunk_strip.size, cropping=True) == (1, 7)
    assert shrunk_wide.width / shrunk_wide.height == pytest.approx(1920 / 1080, rel=0.01)
    small = solid((640, 360))
    assert runtime.prepare_image(small, 2) is small


def test_prompt_template(processor):
    sample = processor.process_one(processor.user_conversation("  Hello there.  "), [])
    text = processor.decode(sample.input_ids.tolist(), skip_special_tokens=False)
    assert text == "<｜begin▁of▁sentence｜><|User|>: Hello there.\n\n<|Assistant|>:"
    assert sample.sft_format == "<|User|>: Hello there.\n\n<|Assistant|>:"
    assert sample.input_ids[0] == processor.bos_id and processor.eos_id not in sample.input_ids.tolist()
    assert sample.images_spatial_crop.tolist() == [[0, 0]] and sample.images.abs().sum() == 0


def test_tiles_are_global_then_local_row_major(processor):
    quadrants = Image.new("RGB", (768, 768))
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for i, color in enumerate(colors):
        quadrants.paste(color, ((i % 2) * 384, (i // 2) * 384, (i % 2 + 1) * 384, (i // 2 + 1) * 384))
    tiles, grid = processor.image_tiles(quadrants, cropping=True)
    assert grid == (2, 2) and len(tiles) == 5
    for tile, color in zip(tiles[1:], colors):
        expected = (torch.tensor(color, dtype=torch.float32) / 255 - 0.5) / 0.5
        assert torch.allclose(tile.mean(dim=(1, 2)), expected)


def test_padding_colour_is_127(processor):
    tiles, _ = processor.image_tiles(solid((384, 96), (255, 255, 255)), cropping=False)
    pad = (127 / 255 - 0.5) / 0.5
    assert torch.allclose(tiles[0][:, 0, 0], torch.full((3,), pad))  # letterbox band of the global view
    assert torch.allclose(tiles[0][:, 192, 192], torch.ones(3))  # the picture itself


def test_images_are_converted_to_rgb(processor):
    rgb = solid((300, 200))
    for mode in ("RGBA", "P", "L"):
        other = rgb.convert(mode)
        ours = processor.process_one(processor.user_conversation("<image>"), [other]).images
        assert torch.equal(
            ours, processor.process_one(processor.user_conversation("<image>"), [other.convert("RGB")]).images
        )


def test_placeholder_mismatch_is_a_value_error(runtime):
    image = solid((64, 64))
    with pytest.raises(ValueError, match="1 <image>"):
        runtime.describe([image, image], "<image> What is this?", max_new_tokens=1)
    with pytest.raises(ValueError, match="0 <image>"):
        runtime.describe([image], "What is this?", max_new_tokens=1)
    with pytest.raises(ValueError):
        runtime.complete("<image> no image here", max_new_tokens=1)
    with pytest.raises(ValueError):
        runtime.count_tokens("<image>", [])


def test_context_overflow_names_both_numbers(runtime):
    prompt = "word " * 5000
    n = runtime.count_tokens(prompt)
    assert n > runtime.context_length
    with pytest.raises(ContextOverflowError, match=rf"{n}.*{runtime.context_length}"):
        runtime.complete(prompt, max_new_tokens=4)


def test_answers_are_stripped_and_budgeted(runtime):
    text = runtime.complete("Describe a rabbit.", max_new_tokens=6)
    assert text == text.strip()
    assert runtime.complete("Describe a rabbit.", max_new_tokens=0) == ""


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_prepare_image_keeps_the_tiles(runtime, mode):
    rng = random.Random(7)
    noise = Image.frombytes("RGB", (640, 400), rng.randbytes(640 * 400 * 3))
    alpha = Image.frombytes("L", (640, 400), rng.randbytes(640 * 400))

    def convert(image: Image.Image) -> Image.Image:
        if mode != "RGBA":
            return image.convert(mode)
        image = image.convert("RGBA")
        image.putalpha(alpha.resize(image.size))  # varying alpha: PIL resizes RGBA premultiplied
        return image

    frames = [convert(noise), convert(noise.rotate(90, expand=True)), convert(noise.crop((0, 0, 500, 300)))]
    processor = runtime.processor
    for count in (2, 3):
        images = (frames * 2)[:count]
        prepared = [runtime.prepare_image(im, count) for im in images]
        if count <= 2:  # the tiling depends on the full size: nothing may change
            assert all(p is im for p, im in zip(prepared, images))
        else:
            assert all(max(p.size) <= processor.config.image_size for p in prepared)
        prompt = "<image>" * count
        ours = processor.process_one(processor.user_conversation(prompt), prepared)
        full = processor.process_one(processor.user_conversation(prompt), images)
        assert torch.equal(ours.images, full.images) and torch.equal(ours.input_ids, full.input_ids)
