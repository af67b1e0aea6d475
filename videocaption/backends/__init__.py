"""Vision-language model backends behind one small interface.

One module each, side by side: ``deepseek_vl2_backend`` (the default: DeepSeek-VL2 in this
process), ``transformers_backend`` (any image-text-to-text model of transformers) and
``openai_backend`` (a model served behind an OpenAI-compatible API). The pipeline only needs to describe batches of images, complete text prompts and count tokens;
:func:`load_model` returns one shared instance per process and configuration, so several
graphs (or several module instances) never load the same weights twice.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from videocaption.options import CaptionOptions


@runtime_checkable
class VisionLanguageModel(Protocol):
    """What the captioning pipeline asks of a model."""

    name: str  # hub id, path or served model name, recorded in result.json
    context_length: int  # prompt plus answer tokens the model can attend to
    # True for a model server: separate calls run at once there, so the pipeline keeps
    # max_threads single-batch calls in flight instead of grouping batches into one call.
    concurrent_calls: bool = False

    def describe_batch(
        self, requests: Sequence[tuple[Sequence[Image.Image], str]], *, max_new_tokens: int
    ) -> list[str]:
        """Answer several independent image prompts; each prompt has one placeholder per image.

        A backend that counts tokens returns :class:`~videocaption.usage.Answers` (a list of
        the texts with their token counts), which the pipeline records in result.json.
        """

    def complete_batch(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Answer several independent text-only prompts (:class:`~videocaption.usage.Answers` too)."""

    def count_tokens(self, prompt: str, image_sizes: Sequence[tuple[int, int]] = ()) -> int:
        """Tokens the prompt takes, with images of these (width, height) sizes."""

    def max_image_tokens(self, num_images: int) -> int:
        """Worst-case tokens taken by ``num_images`` images of unknown size in one prompt."""

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """The smallest image that the model sees exactly like ``image`` (lets frames shrink early)."""


_cache: dict[tuple[str, ...], VisionLanguageModel] = {}
_cache_lock = threading.Lock()


def load_model(options: CaptionOptions) -> VisionLanguageModel:
    """The model the options name, loaded once per process and shared.

    Raises:
        ModelLoadError: a local backend cannot load the checkpoint.
        BackendError: the openai backend cannot reach its endpoint.
    """
    key = _cache_key(options)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _load(options)
            _cache[key] = model
        return model


def _cache_key(options: CaptionOptions) -> tuple[str, ...]:
    if options.backend == "openai":
        return ("openai", options.model, str(options.api_base), options.api_key or "",
                str(options.request_timeout), str(options.max_retries))
    return (options.backend, options.model, options.device, options.dtype)


def _load(options: CaptionOptions) -> VisionLanguageModel:
    if options.backend == "openai":
        from videocaption.backends.openai_backend import OpenAIVLM

        return OpenAIVLM(options.model, str(options.api_base), api_key=options.api_key,
                         request_timeout=options.request_timeout, max_retries=options.max_retries)
    if options.backend == "transformers":
        from videocaption.backends.transformers_backend import TransformersVLM

        return TransformersVLM.from_pretrained(options.model, device=options.device, dtype=options.dtype)
    from videocaption.backends.deepseek_vl2_backend import DeepseekVL2

    return DeepseekVL2.from_pretrained(options.model, device=options.device, dtype=options.dtype)

