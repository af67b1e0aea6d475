"""How DeepSeek-VL2 turns images into tokens: tilings, tokens per tile, and the rule for two frames.

Every backend that runs or talks to DeepSeek-VL2 needs these numbers (the in-process runtime, the
processor that expands ``<image>``, the openai backend that estimates prompts for a served model)
and they all take them from here. They follow from three settings of the checkpoint's
``processor_config.json`` (``candidate_resolutions``, ``patch_size``, ``downsample_ratio``) and,
for the two-frame rule, the context length from its ``config.json``:

* a prompt of one or two images tiles each image: a global 384x384 view plus a grid of local
  384x384 tiles, the grid being the candidate resolution that fits the image best
  (:func:`select_best_resolution`); with three or more images each gets one global view and one
  local tile;
* each 384-pixel tile is 27x27 patches of 14 pixels, which the projector downsamples by 2 to
  14x14 tokens, plus a newline token per row and one separator between the views;
* two frames of the largest tiling (3x3 tiles, 2,101 tokens each) do not fit a 4,096-token
  context, so two-frame prompts shrink frames to the tilings that leave
  :data:`PAIR_TEXT_RESERVE` tokens for the text and the answer (:meth:`ImageGeometry.pair_tilings`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

# Tokens kept free for the prompt text and the answer when two frames share a prompt.
PAIR_TEXT_RESERVE = 512


def select_best_resolution(
    image_size: tuple[int, int], candidate_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The candidate (width, height) that keeps most of the image's pixels, then wastes least.

    Copied operation for operation from upstream (``int()`` truncation included): a different
    rounding picks other tilings for some sizes and so other token counts.
    """
    original_width, original_height = image_size
    best_fit = None
    max_effective_resolution = 0
    min_wasted_resolution = float("inf")
    for width, height in candidate_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = (width * height) - effective_resolution
        if effective_resolution > max_effective_resolution or (
            effective_resolution == max_effective_resolution and wasted_resolution < min_wasted_resolution
        ):
            max_effective_resolution = effective_resolution
            min_wasted_resolution = wasted_resolution
            best_fit = (width, height)
    assert best_fit is not None
    return best_fit


@dataclass(frozen=True)
class ImageGeometry:
    """The image settings of one checkpoint's ``processor_config.json`` and what follows from them."""

    # (width, height) in pixels of the local tile grids an image may get; the first is one tile.
    candidate_resolutions: tuple[tuple[int, int], ...]
    patch_size: int  # pixels per side of a vision patch (14)
    downsample_ratio: int  # the projector merges ratio x ratio patches into one token (2)

    def __post_init__(self) -> None:
        if not self.candidate_resolutions:
            raise ValueError("candidate_resolutions must not be empty")
        if self.patch_size <= 0 or self.downsample_ratio <= 0:
            raise ValueError(
                f"patch_size and downsample_ratio must be positive, got {self.patch_size} and {self.downsample_ratio}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageGeometry:
        """From a parsed ``processor_config.json``.

        Raises:
            ValueError: a setting is missing or malformed.
        """
        try:
            return cls(
                candidate_resolutions=tuple((int(w), int(h)) for w, h in data["candidate_resolutions"]),
                patch_size=int(data["patch_size"]),
                downsample_ratio=int(data["downsample_ratio"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed processor config: {exc!r}") from exc

    @classmethod
    def from_checkpoint(cls, model_dir: str | os.PathLike) -> ImageGeometry:
        """From the ``processor_config.json`` of a checkpoint directory.

        Raises:
            OSError: the file cannot be read.
            ValueError: it is not JSON or lacks a setting.
        """
        with open(Path(model_dir) / "processor_config.json", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    # -- one tile ---------------------------------------------------------------------------

    @property
    def tile(self) -> int:
        """Side of every tile in pixels: upstream takes the first candidate's width (384)."""
        return self.candidate_resolutions[0][0]

    @property
    def tokens_per_side(self) -> int:
        """Image tokens per tile side after the projector's downsampling: ceil(27 / 2) = 14."""
        return math.ceil((self.tile // self.patch_size) / self.downsample_ratio)

    # -- one image --------------------------------------------------------------------------

    def tiling(self, size: tuple[int, int], cropping: bool = True) -> tuple[int, int]:
        """(width_tiles, height_tiles) of the local view of an image of ``size`` (width, height);
        one tile without ``cropping`` (prompts of three or more images)."""
        if not cropping:
            return 1, 1
        width, height = select_best_resolution(size, self.candidate_resolutions)
        return width // self.tile, height // self.tile

    def tiling_tokens(self, width_tiles: int, height_tiles: int) -> int:
        """Global view rows with a newline each, one view separator, local rows with newlines."""
        n = self.tokens_per_side
        return n * (n + 1) + 1 + (height_tiles * n) * (width_tiles * n + 1)

    def image_tokens(self, size: tuple[int, int], num_images: int) -> int:
        """Tokens of one image of ``size`` in a prompt of ``num_images`` images."""
        return self.tiling_tokens(*self.tiling(size, cropping=num_images <= 2))

    def worst_image_tokens(self, num_images: int) -> int:
        """Most tokens any one image can take in a prompt of ``num_images`` images, as the
        processor tiles it (without the two-frame rule of :meth:`prepare_image`)."""
        if num_images > 2:
            return self.tiling_tokens(1, 1)
        return max(self.tiling_tokens(w // self.tile, h // self.tile) for w, h in self.candidate_resolutions)

    # -- the images of one prompt, prepared -------------------------------------------------

    def pair_tilings(self, context_length: int) -> list[tuple[int, int]]:
        """Candidate resolutions for two-image prompts: those of up to as many tiles as lets two
        frames of any of them fit ``context_length`` with :data:`PAIR_TEXT_RESERVE` tokens to spare.

        Bounded by tile count, not tokens: the processor may pick a different shape of the same
        or smaller area for a shrunk frame, and every such shape is then allowed too.
        """
        tile = self.tile
        budget = (context_length - PAIR_TEXT_RESERVE) // 2
        for max_tiles in sorted({w * h // (tile * tile) for w, h in self.candidate_resolutions}, reverse=True):
            allowed = [c for c in self.candidate_resolutions if c[0] * c[1] // (tile * tile) <= max_tiles]
            if max(self.tiling_tokens(w // tile, h // tile) for w, h in allowed) <= budget:
                return allowed
        return [(tile, tile)]

    def max_image_tokens(self, num_images: int, context_length: int) -> int:
        """Worst-case image tokens of ``num_images`` images of unknown size in one prompt, once
        each went through :meth:`prepare_image`."""
        if num_images <= 0:
            return 0
        if num_images == 2:
            return 2 * max(
                self.tiling_tokens(w // self.tile, h // self.tile) for w, h in self.pair_tilings(context_length)
            )
        return num_images * self.worst_image_tokens(num_images)

    def prepare_image(self, image: Image.Image, num_images: int, context_length: int) -> Image.Image:
        """``image`` made ready for a prompt of ``num_images`` images, as small as it can be.

        More than two images: every image becomes a global and a local view padded to one tile;
        shrinking it to fit one tile now, with the processor's own resize, gives identical
        pixels later (the processor's resize to the same size is a copy), so a 4K frame is not
        kept at full size while its batch waits.

        Two images: a frame whose tiling would be larger than :meth:`pair_tilings` allows is
        shrunk to fit the best allowed tiling; the processor then picks that tiling or a smaller
        one. Other frames, and single images, are kept as they are.
        """
        tile = self.tile
        if num_images == 2:
            allowed = self.pair_tilings(context_length)
            if select_best_resolution(image.size, self.candidate_resolutions) in allowed:
                return image
            target = select_best_resolution(image.size, allowed)
            return ImageOps.contain(image.convert("RGB"), target, method=Image.Resampling.BICUBIC)
        if num_images < 2 or (image.width <= tile and image.height <= tile):
            return image
        # The processor converts to RGB before resizing; resizing first (e.g. RGBA, which PIL
        # resizes with premultiplied alpha) would give other pixels.
        return ImageOps.contain(image.convert("RGB"), (tile, tile), method=Image.Resampling.BICUBIC)


# The image settings shared by deepseek-ai/deepseek-vl2-tiny, -small and deepseek-vl2 (their
# processor_config.json files agree): 384-pixel tiles of 14-pixel patches, downsampled by 2, and
# every grid of up to 9 tiles. Used where no checkpoint is at hand (a model behind an API).
HUB_GEOMETRY = ImageGeometry(
    candidate_resolutions=tuple(
        (384 * w, 384 * h)
        for w, h in (
            (1, 1),
            (1, 2),
            (2, 1),
            (1, 3),
            (3, 1),
            (1, 4),
            (4, 1),
            (2, 2),
            (1, 5),
            (5, 1),
            (1, 6),
            (6, 1),
            (2, 3),
            (3, 2),
            (1, 7),
            (7, 1),
            (1, 8),
            (8, 1),
            (2, 4),
            (4, 2),
            (1, 9),
            (9, 1),
            (3, 3),
        )
    ),
    patch_size=14,
    downsample_ratio=2,
)
