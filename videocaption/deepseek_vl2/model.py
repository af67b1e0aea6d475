"""DeepSeek-VL2: SigLIP tiles -> projector -> image token embeddings inside the text sequence.

Each image contributes a global view and a grid of local tiles (see ``processor.py``). Their
14x14 projected tokens are laid out in 2D: the global view row by row with an ``image_newline``
embedding after each row, one ``view_seperator`` [sic, the checkpoint's name], then the local
tiles stitched into one large grid (row-major over tiles) again with a newline after each row.
That sequence replaces the ``<image>`` token embeddings (``images_seq_mask``) in order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import DeepseekVL2Config
from .language import DeepseekV2ForCausalLM
from .projector import MlpProjector
from .vision import VisionTransformer


class DeepseekVL2Model(nn.Module):
    """Parameter names match the official checkpoint: ``vision.*``, ``projector.*``,
    ``image_newline``, ``view_seperator``, ``language.model.*``, ``language.lm_head.*``."""

    def __init__(self, config: DeepseekVL2Config, *, vision_chunk_size: int = 16) -> None:
        super().__init__()
        self.config = config
        self.vision_chunk_size = vision_chunk_size  # tiles per vision forward (bounds activation memory)
        self.vision = VisionTransformer(config.vision)
        self.projector = MlpProjector(config.projector)
        self.image_newline = nn.Parameter(torch.zeros(config.projector.n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(config.projector.n_embed))
        self.language = DeepseekV2ForCausalLM(config.language)

    @staticmethod
    def tiles_per_row(images_spatial_crop: torch.Tensor) -> list[list[tuple[int, int]]]:
        """Per conversation, the (width_tiles, height_tiles) of each real image (zero rows end the list)."""
        grids = []
        for row in images_spatial_crop.tolist():
            grid = []
            for w, h in row:
                if w == 0 or h == 0:
                    break
                grid.append((w, h))
            grids.append(grid)
        return grids

    def encode_images(self, images: torch.Tensor, images_spatial_crop: torch.Tensor) -> torch.Tensor:
        """Projected features [n_real_tiles, 196, hidden] of every real tile, in batch order.

        ``images`` [B, max_tiles, 3, S, S] holds, per conversation, for each image its global view
        then its local tiles; the zero tiles padding the batch are skipped.
        """
        tiles = []
        for b, grid in enumerate(self.tiles_per_row(images_spatial_crop)):
            n = sum(1 + w * h for w, h in grid)
            if n:
                tiles.append(images[b, :n])
        if not tiles:
            return images.new_zeros(0, 0, self.config.projector.n_embed)
        tiles = torch.cat(tiles).to(self.image_newline.dtype)
        chunks = [
            self.projector(self.vision(tiles[i : i + self.vision_chunk_size]))
            for i in range(0, tiles.shape[0], self.vision_chunk_size)
        ]
        return torch.cat(chunks)

    def _layout(self, features: torch.Tensor, width_tiles: int, height_tiles: int) -> torch.Tensor:
        """Token sequence of one image from its 1 + w*h tile features [1 + w*h, hw, D]."""
        _, hw, d = features.shape
        side = math.isqrt(hw)
        glob = features[0].view(side, side, d)
        glob = torch.cat([glob, self.image_newline.expand(side, 1, d)], dim=1).reshape(-1, d)  # [side*(side+1), D]
        local = features[1:].view(height_tiles, width_tiles, side, side, d)
        local = local.permute(0, 2, 1, 3, 4).reshape(height_tiles * side, width_tiles * side, d)  # stitched grid
        local = torch.cat([local, self.image_newline.expand(height_tiles * side, 1, d)], dim=1).reshape(-1, d)
        sep = self.view_seperator[None]
        parts = [glob, sep, local] if self.config.global_view_pos == "head" else [local, sep, glob]
        return torch.cat(parts)

    def image_sequence(self, image_embeds: torch.Tensor, images_spatial_crop: torch.Tensor) -> torch.Tensor:
        """All image token embeddings of the batch in sequence order [n_image_tokens, D]."""
        out, tile = [], 0
        for grid in self.tiles_per_row(images_spatial_crop):
            for w, h in grid:
                out.append(self._layout(image_embeds[tile : tile + 1 + w * h], w, h))
                tile += 1 + w * h
        if tile != image_embeds.shape[0]:
            raise ValueError(f"images_spatial_crop describes {tile} tiles but {image_embeds.shape[0]} were encoded")
        return torch.cat(out) if out else image_embeds.new_zeros(0, self.config.projector.n_embed)

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B, T, D] with the image features scattered where ``images_seq_mask`` is set.

        ``image_embeds`` (from :meth:`encode_images`) may be passed to skip the vision tower.
        """
        embeds = self.language.model.embed_tokens(input_ids)
        if images_seq_mask is None or images_spatial_crop is None:
            return embeds
        if image_embeds is None:
            if images is None or not bool(images_spatial_crop.any()):
                image_embeds = embeds.new_zeros(0, 0, embeds.shape[-1])
            else:
                image_embeds = self.encode_images(images, images_spatial_crop)
        features = (
            self.image_sequence(image_embeds, images_spatial_crop)
            if image_embeds.shape[0]
            else embeds.new_zeros(0, embeds.shape[-1])
        )
        mask = images_seq_mask.bool()
        n_tokens = int(mask.sum())
        if n_tokens != features.shape[0]:
            raise ValueError(
                f"the prompt has {n_tokens} image tokens but the images give {features.shape[0]} image features"
            )
        if n_tokens == 0:
            return embeds
        # masked_scatter fills masked positions in row-major order: conversation 0 first, as built.
        return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))
