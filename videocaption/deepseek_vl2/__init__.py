"""DeepSeek-VL2 inference in plain torch: official checkpoints, no upstream package, CPU/CUDA/MPS.

This package is the model (config, processor, geometry, vision, projector, language, generation,
weights); the backend that the captioning pipeline calls, :class:`DeepseekVL2`, lives beside the
other backends in :mod:`videocaption.backends.deepseek_vl2_backend` and is importable from here too.
"""

from typing import Any

from .config import DeepseekVL2Config, LanguageConfig, ProjectorConfig, VisionConfig
from .generation import GenerationOutput, generate
from .geometry import HUB_GEOMETRY, PAIR_TEXT_RESERVE, ImageGeometry, select_best_resolution
from .language import DeepseekV2ForCausalLM, KVCache
from .model import DeepseekVL2Model
from .processor import DeepseekVL2Batch, DeepseekVL2Processor

__all__ = [
    "DeepseekVL2",
    "DeepseekVL2Batch",
    "DeepseekVL2Config",
    "DeepseekVL2Model",
    "DeepseekVL2Processor",
    "DeepseekV2ForCausalLM",
    "GenerationOutput",
    "HUB_GEOMETRY",
    "ImageGeometry",
    "KVCache",
    "LanguageConfig",
    "PAIR_TEXT_RESERVE",
    "ProjectorConfig",
    "VisionConfig",
    "generate",
    "select_best_resolution",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the backend imports this package, so importing it eagerly here
    # would be circular.
    if name == "DeepseekVL2":
        from videocaption.backends.deepseek_vl2_backend import DeepseekVL2

        return DeepseekVL2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
