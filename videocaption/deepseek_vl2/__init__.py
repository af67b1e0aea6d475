"""DeepSeek-VL2 inference in plain torch: official checkpoints, no upstream package, CPU/CUDA/MPS."""

from .config import DeepseekVL2Config, LanguageConfig, ProjectorConfig, VisionConfig
from .generation import GenerationOutput, generate
from .language import DeepseekV2ForCausalLM, KVCache
from .model import DeepseekVL2Model
from .processor import DeepseekVL2Batch, DeepseekVL2Processor, select_best_resolution
from .runtime import DeepseekVL2

__all__ = [
    "DeepseekVL2",
    "DeepseekVL2Batch",
    "DeepseekVL2Config",
    "DeepseekVL2Model",
    "DeepseekVL2Processor",
    "DeepseekV2ForCausalLM",
    "GenerationOutput",
    "KVCache",
    "LanguageConfig",
    "ProjectorConfig",
    "VisionConfig",
    "generate",
    "select_best_resolution",
]
