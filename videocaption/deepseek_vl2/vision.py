"""SigLIP vision tower, written with plain torch under timm's parameter names.

DeepSeek-VL2 uses timm's ``VisionTransformer`` configured as SigLIP so400m: no class token, qkv
bias, LayerNorm eps 1e-6, tanh-approximated GELU, no layer scale, a final LayerNorm, and the
attention-pooling head left unused (``ignore_head``): the output is every patch token. Module names
(``patch_embed.proj``, ``pos_embed``, ``blocks.N.attn.qkv`` ...) mirror the checkpoint keys so that
the official state dict loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (a strided conv; 384 px / 14 px keeps 27x27 patches)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixels)  # [N, width, 27, 27]
        return x.flatten(2).transpose(1, 2)  # [N, 729, width]


class Attention(nn.Module):
    """Bidirectional multi-head self-attention over the patches of one tile."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.heads
        self.head_dim = config.width // config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=True)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [N, heads, T, head_dim]
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(x.transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_hidden)
        self.fc2 = nn.Linear(config.mlp_hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SigLIP uses the tanh approximation (PytorchGELUTanh), not the exact erf GELU.
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Tiles [N, 3, S, S] -> patch features [N, (S // patch)^2, width] after the final norm."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid * config.grid, config.width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(f"vision tiles must be {size}x{size}, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed(pixels) + self.pos_embed  # [N, 729, width]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
