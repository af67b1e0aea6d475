"""Vision-to-language projector (``downsample_mlp_gelu``).

Each 2x2 block of neighbouring patch features is concatenated into one token (27x27 patches are
first zero-padded to 28x28 at the bottom/right), cutting the tokens per tile four-fold to 14x14,
then an MLP maps them to the language width. The concatenation order is ``F.unfold``'s:
channel-major, ``c * 4 + (dy * 2 + dx)``, which the trained first layer depends on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ProjectorConfig


class MlpProjector(nn.Module):
    """[N, h*w, input_dim] -> [N, ceil(h/r) * ceil(w/r), n_embed]; ``layers`` mirrors the checkpoint."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        r, hidden = config.downsample_ratio, config.n_embed * config.mlp_ratio
        modules: list[nn.Module] = [nn.Linear(config.input_dim * r * r, hidden)]
        for _ in range(1, config.depth - 1):
            modules += [nn.GELU(), nn.Linear(hidden, hidden)]
        modules += [nn.GELU(), nn.Linear(hidden, config.n_embed)]  # exact (erf) GELU, unlike the ViT
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, hw, c = x.shape
        side, r = math.isqrt(hw), self.config.downsample_ratio
        pad = -side % r
        x = x.reshape(n, side, side, c)
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))  # [N, 28, 28, C]: zero rows/columns bottom-right
        x = x.permute(0, 3, 1, 2)  # [N, C, 28, 28]
        x = F.unfold(x, kernel_size=r, stride=r)  # [N, C * r * r, 196]
        return self.layers(x.transpose(1, 2))  # [N, 196, n_embed]
