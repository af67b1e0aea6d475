"""Vision-language model backends behind one small interface.

One module each, side by side: ``deepseek_vl2_backend`` (the default: DeepSeek-VL2 in this
process), ``transformers_backend`` (any image-text-to-text model of transformers) and
``openai_backend`` (a model served behind an OpenAI-compatible API). The pipeline only needs
to describe batches of images, complete text prompts and count tokens;
:func:`load_backend` takes plain values (a :class:`ModelSpec`: backend, model, device, dtype,
endpoint) and returns one shared instance per process and spec, so several graphs (or several
module instances) never load the same weights twice; :func:`load_model` is the same from a
run's :class:`~videocaption.options.CaptionOptions`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from typing import Protocol, runtime_checkable

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
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        *,
        max_new_tokens: int,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        """Answer several independent image prompts; each prompt has one placeholder per image.

        A backend that counts tokens returns :class:`~videocaption.usage.Answers` (a list of
        the texts with their token counts), which the pipeline records in result.json.
        ``json_schemas`` (one per request, only with ``events``): each answer is to be a JSON
        document valid against its schema (constrained decoding in process, ``response_format``
        for a server). A local backend also has ``min_events_tokens(schema)``, the least
        ``max_new_tokens`` that guarantees a complete document.
        """

    def complete_batch(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Answer several independent text-only prompts (:class:`~videocaption.usage.Answers` too)."""

    def count_tokens(self, prompt: str, image_sizes: Sequence[tuple[int, int]] = ()) -> int:
        """Tokens the prompt takes, with images of these (width, height) sizes."""

    def max_image_tokens(self, num_images: int) -> int:
        """Worst-case tokens taken by ``num_images`` images of unknown size in one prompt."""

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """The smallest image that the model sees exactly like ``image`` (lets frames shrink early)."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, as plain values: what a backend needs and nothing else.

    Equal specs share one loaded model (see :func:`load_backend`); :meth:`from_options` leaves
    out what the backend does not read (a server's client has no device, a local model no
    endpoint), so such options never load the weights again.
    """

    backend: str
    model: str
    device: str = "auto"
    dtype: str = "auto"
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    request_timeout: float = 120.0
    max_retries: int = 3

    @classmethod
    def from_options(cls, options: CaptionOptions) -> ModelSpec:
        if options.backend == "openai":
            return cls(
                "openai",
                options.model,
                api_base=options.api_base,
                api_key=options.api_key,
                request_timeout=options.request_timeout,
                max_retries=options.max_retries,
            )
        return cls(options.backend, options.model, device=options.device, dtype=options.dtype)


# Keyed by the spec's values as a tuple (backend, model, ...).
_cache: dict[tuple, VisionLanguageModel] = {}
_cache_lock = threading.Lock()


def load_model(options: CaptionOptions) -> VisionLanguageModel:
    """The model the options name, loaded once per process and shared (see :func:`load_backend`)."""
    return load_backend(ModelSpec.from_options(options))


def load_backend(spec: ModelSpec) -> VisionLanguageModel:
    """The model ``spec`` names, loaded once per process and shared.

    Raises:
        ModelLoadError: a local backend cannot load the checkpoint.
        BackendError: the openai backend cannot reach its endpoint.
    """
    key = astuple(spec)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _load(spec)
            _cache[key] = model
        return model


def _cache_key(options: CaptionOptions) -> tuple:
    """The cache's key for these options (lets a benchmark put its own model there)."""
    return astuple(ModelSpec.from_options(options))


def _load(spec: ModelSpec) -> VisionLanguageModel:
    if spec.backend == "openai":
        from videocaption.backends.openai_backend import OpenAIVLM

        return OpenAIVLM(
            spec.model,
            str(spec.api_base),
            api_key=spec.api_key,
            request_timeout=spec.request_timeout,
            max_retries=spec.max_retries,
        )
    if spec.backend == "transformers":
        from videocaption.backends.transformers_backend import TransformersVLM

        return TransformersVLM.from_pretrained(spec.model, device=spec.device, dtype=spec.dtype)
    from videocaption.backends.deepseek_vl2_backend import DeepseekVL2

    return DeepseekVL2.from_pretrained(spec.model, device=spec.device, dtype=spec.dtype)
