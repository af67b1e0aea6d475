"""How a prompt with image placeholders becomes a chat message, for backends with chat APIs.

The pipeline writes one :data:`~videocaption.prompts.IMAGE_PLACEHOLDER` per image into its
prompts. Chat templates (transformers) and chat APIs (OpenAI-compatible servers) want the
images as separate content parts instead, at the place of the placeholders, so that every
model family puts its own image tokens there. Both backends split prompts the same way here.
"""

from __future__ import annotations

from PIL import Image

from videocaption.prompts import IMAGE_PLACEHOLDER

# Longest side of the images sent to a model. A 4K frame would otherwise cost a Qwen2-VL-style
# model ~10k tokens, and an OpenAI-compatible server megabytes of base64 per frame.
DEFAULT_MAX_IMAGE_SIDE = 1024


def interleave(prompt: str, num_images: int) -> list[str | int]:
    """The prompt as text pieces and image indices, in reading order.

    Images without a placeholder come first, the common convention of chat templates; empty
    text pieces are dropped.

    Args:
        prompt: user message text with one placeholder per image.
        num_images: how many images go with it.

    Returns:
        Strings (text) and ints (the index of the image at that place), each image once.

    Raises:
        ValueError: the prompt has more placeholders than there are images.
    """
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    placeholders = len(pieces) - 1
    if placeholders > num_images:
        raise ValueError(f"the prompt has {placeholders} image placeholders but only {num_images} images")
    parts: list[str | int] = list(range(num_images - placeholders))
    for index, text in enumerate(pieces):
        if text:
            parts.append(text)
        if index < placeholders:
            parts.append(num_images - placeholders + index)
    return parts


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` scaled down (never up) so that its longest side is at most ``max_side``."""
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)
