"""DeepSeek-VL2 configuration, read from the official ``config.json``.

The official file leaves many fields out and relies on the defaults of the upstream config
classes (``VisionEncoderConfig``, ``MlpProjectorConfig``, ``DeepseekV2Config``,
``DeepseekVLV2Config``); a port that guessed other defaults would build another network from the
same file. The defaults below are therefore copied from those classes, odd ones included
(``tile_tag`` defaults to the invalid string ``"tile_tag"``, the language model to a 30-layer MLA
model with ``bos_token_id`` 100000). Unknown keys (``architectures``, ``auto_map``, ``lm_head``,
``torch_dtype``, ...) are ignored, as ``PretrainedConfig`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

MODEL_TYPE = "deepseek_vl_v2"


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls`` (the rest is ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP ViT (``VisionEncoderConfig``); only the shape fields drive the network.

    ``model_name`` is recorded but ignored, as upstream builds the tower from ``width``,
    ``layers``, ``heads``, ``mlp_ratio``, ``patch_size`` and ``image_size``.
    """

    model_name: str = "siglip_large_patch16_384"
    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4
    global_pool: str = "map"
    ignore_head: bool = True
    class_token: bool = False
    num_classes: int = 0

    @property
    def mlp_hidden(self) -> int:
        # timm: int(dim * mlp_ratio), e.g. int(1152 * 3.7362) = 4304
        return int(self.width * self.mlp_ratio)

    @property
    def grid(self) -> int:
        """Patches per side (timm PatchEmbed drops the remainder: 384 // 14 = 27)."""
        return self.image_size // self.patch_size

    def validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")
        if self.class_token:
            raise ValueError("vision class_token=True is not supported (DeepSeek-VL2 uses none)")
        if not self.ignore_head:
            raise ValueError("vision ignore_head=False is not supported (DeepSeek-VL2 uses the patch tokens)")
        if self.image_size < self.patch_size or min(self.width, self.layers, self.heads) <= 0:
            raise ValueError("vision image_size/patch_size/width/layers/heads must be positive and consistent")


@dataclass(frozen=True)
class ProjectorConfig:
    """Vision-to-language projector (``MlpProjectorConfig``)."""

    projector_type: str = "downsample_mlp_gelu"
    input_dim: int = 1152
    n_embed: int = 2048
    depth: int = 2
    mlp_ratio: int = 1
    downsample_ratio: int = 2
    token_pooling: bool = False

    def validate(self) -> None:
        if self.projector_type != "downsample_mlp_gelu":
            raise ValueError(
                f"projector_type {self.projector_type!r} is not supported (only 'downsample_mlp_gelu', "
                "which every DeepSeek-VL2 checkpoint uses)"
            )
        if self.token_pooling:
            raise ValueError("projector token_pooling=True is not supported")
        if self.depth < 1 or self.downsample_ratio < 1 or self.mlp_ratio < 1:
            raise ValueError("projector depth, mlp_ratio and downsample_ratio must be >= 1")


@dataclass(frozen=True)
class LanguageConfig:
    """DeepSeek-MoE decoder (``DeepseekV2Config``), with the upstream defaults."""

    vocab_size: int = 102400
    hidden_size: int = 4096
    intermediate_size: int = 11008
    moe_intermediate_size: int = 1407
    num_hidden_layers: int = 30
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    n_shared_experts: int | None = None
    n_routed_experts: int | None = None
    routed_scaling_factor: float = 1.0
    kv_lora_rank: int | None = 512
    q_lora_rank: int | None = 1536
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    qk_nope_head_dim: int = 128
    topk_method: str = "greedy"
    n_group: int | None = None
    topk_group: int | None = None
    num_experts_per_tok: int | None = None
    moe_layer_freq: int = 1
    first_k_dense_replace: int = 0
    norm_topk_prob: bool = False
    scoring_func: str = "softmax"
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    pad_token_id: int | None = None
    bos_token_id: int = 100000
    eos_token_id: int = 100001
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    use_mla: bool = True

    def __post_init__(self) -> None:
        # DeepseekV2Config: "for backward compatibility", None means one kv head per head.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        object.__setattr__(self, "rms_norm_eps", float(self.rms_norm_eps))

    @property
    def head_dim(self) -> int:
        """Head size of plain multi-head attention (LlamaAttention: hidden / heads)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def q_head_dim(self) -> int:
        """Query/key head size of multi-head latent attention (nope + rope parts)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether decoder layer ``layer_idx`` uses routed experts instead of the dense MLP."""
        return (
            self.n_routed_experts is not None
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    def validate(self) -> None:
        if self.rope_scaling is not None:
            raise ValueError(
                f"rope_scaling {self.rope_scaling!r} is not supported (no DeepSeek-VL2 checkpoint uses it)"
            )
        if self.hidden_act not in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported")
        if self.use_mla:
            if not self.kv_lora_rank or self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
                raise ValueError("use_mla needs kv_lora_rank > 0 and an even qk_rope_head_dim > 0")
            if self.v_head_dim <= 0 or self.qk_nope_head_dim < 0:
                raise ValueError("use_mla needs v_head_dim > 0 and qk_nope_head_dim >= 0")
        else:
            if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
                raise ValueError(
                    f"hidden_size {self.hidden_size} must split into {self.num_attention_heads} heads of even size"
                )
            if self.num_attention_heads % self.num_key_value_heads:
                raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.n_routed_experts is not None:
            if not self.num_experts_per_tok or self.num_experts_per_tok > self.n_routed_experts:
                raise ValueError("num_experts_per_tok must be between 1 and n_routed_experts")
            if self.moe_layer_freq < 1:
                raise ValueError("moe_layer_freq must be >= 1")
            if self.scoring_func not in ("softmax", "sigmoid"):
                raise ValueError(f"scoring_func {self.scoring_func!r} is not supported")
            if self.topk_method not in ("greedy", "group_limited_greedy", "noaux_tc"):
                raise ValueError(f"topk_method {self.topk_method!r} is not supported")
            if self.topk_method != "greedy":
                if not self.n_group or not self.topk_group or self.n_routed_experts % self.n_group:
                    raise ValueError(
                        f"topk_method {self.topk_method!r} needs n_group dividing the experts and topk_group"
                    )
                if self.topk_group > self.n_group:
                    raise ValueError("topk_group must not exceed n_group")
                if self.topk_method == "noaux_tc" and self.n_routed_experts // self.n_group < 2:
                    raise ValueError("noaux_tc ranks groups by their top-2 scores: groups need >= 2 experts")


@dataclass(frozen=True)
class DeepseekVL2Config:
    """The whole model (``DeepseekVLV2Config``)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    tile_tag: str = "tile_tag"  # upstream default, deliberately invalid: configs must say "2D"
    global_view_pos: str = "head"
    candidate_resolutions: tuple[tuple[int, int], ...] = ((384, 384),)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepseekVL2Config:
        """Build and validate a config from the parsed ``config.json``; ValueError if unusable."""
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        try:
            vision = VisionConfig(**_known_fields(VisionConfig, data.get("vision_config") or {}))
            projector = ProjectorConfig(**_known_fields(ProjectorConfig, data.get("projector_config") or {}))
            language = LanguageConfig(**_known_fields(LanguageConfig, data.get("language_config") or {}))
            resolutions = tuple((int(w), int(h)) for w, h in data.get("candidate_resolutions", ((384, 384),)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed config: {exc}") from exc
        config = cls(
            vision=vision,
            projector=projector,
            language=language,
            tile_tag=data.get("tile_tag", "tile_tag"),
            global_view_pos=data.get("global_view_pos", "head"),
            candidate_resolutions=resolutions,
        )
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> DeepseekVL2Config:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def validate(self) -> None:
        if self.tile_tag != "2D":
            # "1D" exists upstream but is marked abandoned and no checkpoint uses it.
            raise ValueError(f"tile_tag must be '2D', got {self.tile_tag!r}")
        if self.global_view_pos not in ("head", "tail"):
            raise ValueError(f"global_view_pos must be 'head' or 'tail', got {self.global_view_pos!r}")
        if not self.candidate_resolutions:
            raise ValueError("candidate_resolutions must not be empty")
        if self.projector.input_dim != self.vision.width:
            raise ValueError(
                f"projector input_dim {self.projector.input_dim} differs from vision width {self.vision.width}"
            )
        if self.projector.n_embed != self.language.hidden_size:
            raise ValueError(
                f"projector n_embed {self.projector.n_embed} differs from language hidden_size "
                f"{self.language.hidden_size}"
            )
        self.vision.validate()
        self.projector.validate()
        self.language.validate()
