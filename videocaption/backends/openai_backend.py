"""A model served behind an OpenAI-compatible chat completions endpoint (vLLM, TGI, SGLang, ...).

Serving frameworks batch the requests in flight on the GPU themselves (continuous batching),
so the way to use them well is to keep several requests open: :meth:`OpenAIVLM.describe_batch`
sends the group of batch prompts the pipeline hands it (up to ``max_threads``) concurrently,
one thread each. Images travel inline as base64 JPEG data URLs, interleaved with the text
where the prompt's placeholders were, several per message.

Failures of the network or the server are retried with exponential backoff; what still fails
becomes a :class:`BackendError` naming the endpoint, which ends the run (the BMF module keeps
the batches described so far).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from videocaption.backends.messages import DEFAULT_MAX_IMAGE_SIDE, interleave, shrink
from videocaption.deepseek_vl2.geometry import HUB_GEOMETRY, ImageGeometry
from videocaption.errors import BackendError
from videocaption.options import CaptionOptions
from videocaption.prompts import IMAGE_PLACEHOLDER
from videocaption.usage import Answers, Usage

log = logging.getLogger("llm_caption")

T = TypeVar("T")

API_KEY_ENV = "OPENAI_API_KEY"
# vLLM and most self-hosted servers accept any key unless started with --api-key; the client wants one.
PLACEHOLDER_API_KEY = "EMPTY"
# Used when neither the caller nor the server (vLLM reports max_model_len) says otherwise: large, so
# that the server, which knows, is the one to refuse an over-long prompt.
DEFAULT_CONTEXT_LENGTH = 32768
# Token estimates, as no tokenizer is at hand for a remote model. About 3.5 characters make a token
# in English for common tokenizers: 3 errs towards more tokens, which only makes summaries split
# earlier. 576 tokens an image is LLaVA's 24x24 grid and lies between DeepSeek-VL2 with three or
# more images (~200 each) and Qwen2-VL on a 1024x576 frame (~750).
CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 16
IMAGE_TOKENS_ESTIMATE = 576
RETRY_STATUSES = (408, 409, 429)  # and every 5xx
MAX_BACKOFF_SECONDS = 30.0
JPEG_QUALITY = 90


class OpenAIVLM:
    """A served vision-language model behind the :class:`VisionLanguageModel` protocol.

    Args:
        model: the served model name (vLLM's ``--served-model-name``, by default the hub id).
        api_base: the endpoint's base URL, ending in ``/v1``.
        api_key: the key; ``OPENAI_API_KEY`` when None, and a placeholder when that is unset too.
        request_timeout: seconds one request may take before it counts as failed (and is retried).
        max_retries: further attempts after a failure that may pass (429, 5xx, timeouts,
            refused connections); other errors (400, 401, 404) are not retried.
        retry_backoff: seconds before the first retry; each further retry waits twice as long.
        context_length: the model's context; None asks the server (vLLM tells) or assumes
            :data:`DEFAULT_CONTEXT_LENGTH`.
        max_image_side: frames are shrunk to this longest side before they are encoded.
        image_tokens: the estimate of tokens per image (see :meth:`count_tokens`); None: exact
            counts for DeepSeek-VL2 (recognised by the served name or the ``root`` that vLLM
            lists for it), :data:`IMAGE_TOKENS_ESTIMATE` for other models.

    Raises:
        BackendError: the endpoint cannot be reached or refuses the key (the server is asked
            for its models on creation, so that a wrong URL fails before any video is decoded).
    """

    concurrent_calls = True  # the server batches requests: keep max_threads of them in flight

    def __init__(
        self,
        model: str,
        api_base: str,
        *,
        api_key: str | None = None,
        request_timeout: float = CaptionOptions.request_timeout,
        max_retries: int = CaptionOptions.max_retries,
        retry_backoff: float = 1.0,
        context_length: int | None = None,
        max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
        image_tokens: int | None = None,
    ) -> None:
        from openai import OpenAI

        self.name = model
        self.api_base = api_base.rstrip("/")
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_image_side = max_image_side
        self.image_tokens = image_tokens or IMAGE_TOKENS_ESTIMATE
        key = api_key or os.environ.get(API_KEY_ENV) or PLACEHOLDER_API_KEY
        # Retries are ours (counted, logged, and ending in an error that names the endpoint).
        self.client = OpenAI(base_url=self.api_base, api_key=key, timeout=request_timeout, max_retries=0)
        self._root: str | None = None  # the checkpoint behind the served name, where the server says
        self.context_length = context_length or self._served_context_length() or DEFAULT_CONTEXT_LENGTH
        self.deepseek_vl2 = image_tokens is None and any(
            is_deepseek_vl2(name) for name in (self.name, self._root) if name
        )
        # DeepSeek-VL2's image settings: the served checkpoint's own where the server names a
        # directory here (vLLM's ``root``), else those of the hub models.
        self.geometry: ImageGeometry = _local_geometry(self._root) or HUB_GEOMETRY

    # -- requests -----------------------------------------------------------------------------

    def describe_batch(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        *,
        max_new_tokens: int,
        json_schemas: Sequence[dict] | None = None,
    ) -> list[str]:
        """Send every request at once, one thread each, and return the answers in order.

        ``json_schemas``: one per request, sent as ``response_format`` (``json_schema``, strict);
        a server may ignore it, so the caller validates what comes back.

        Raises:
            BackendError: a request still failed after its retries (the others are finished first).
            ValueError: a prompt has more placeholders than images.
        """
        prepared = [[self.prepare_image(image, len(images)) for image in images] for images, _ in requests]
        messages = [self._prepared_message(prompt, images) for (_, prompt), images in zip(requests, prepared)]
        image_tokens = [
            self._image_tokens([image.size for image in images]) if self.deepseek_vl2 else None for images in prepared
        ]
        formats = (
            [None] * len(messages)
            if json_schemas is None
            else [
                {"type": "json_schema", "json_schema": {"name": "events", "schema": schema, "strict": True}}
                for schema in json_schemas
            ]
        )
        return self._concurrently(messages, max_new_tokens, image_tokens, formats)

    def complete_batch(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Text-only prompts, sent concurrently like :meth:`describe_batch`.

        Raises:
            BackendError: a request still failed after its retries.
        """
        messages = [{"role": "user", "content": prompt} for prompt in prompts]
        return self._concurrently(messages, max_new_tokens, [0] * len(messages))

    def _concurrently(
        self,
        messages: list[dict[str, Any]],
        max_new_tokens: int,
        image_tokens: list[int | None],
        formats: list[dict[str, Any] | None] | None = None,
    ) -> Answers:
        """The answers, with the token counts the server reports (``usage``) where it does."""
        formats = formats or [None] * len(messages)
        if len(messages) <= 1:
            answers = [self._chat(message, max_new_tokens, fmt) for message, fmt in zip(messages, formats)]
        else:
            with ThreadPoolExecutor(max_workers=len(messages), thread_name_prefix="llm_caption_request") as pool:
                futures = [
                    pool.submit(self._chat, message, max_new_tokens, fmt) for message, fmt in zip(messages, formats)
                ]
                answers = [future.result() for future in futures]
        usage = [
            None if counts is None else Usage(counts.prompt_tokens, counts.completion_tokens, images)
            for (_, counts), images in zip(answers, image_tokens)
        ]
        return Answers([text for text, _ in answers], usage)

    def complete(self, message: dict[str, Any], max_new_tokens: int) -> str:
        """One chat completion for one user message, greedy, with retries.

        Raises:
            BackendError: it failed ``max_retries + 1`` times, or once in a way retrying cannot fix.
        """
        return self._chat(message, max_new_tokens)[0]

    def _chat(
        self, message: dict[str, Any], max_new_tokens: int, response_format: dict[str, Any] | None = None
    ) -> tuple[str, Any]:
        """:meth:`complete`'s answer and the response's ``usage`` (None when the server sends none)."""
        extra = {} if response_format is None else {"response_format": response_format}
        response = self._with_retries(
            "/chat/completions",
            lambda: self.client.chat.completions.create(
                model=self.name,
                messages=[message],
                max_tokens=max_new_tokens,
                temperature=0.0,
                **extra,
            ),
        )
        endpoint = f"{self.api_base}/chat/completions"
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):  # a web page, or JSON that is no chat completion
            raise BackendError(
                f"{endpoint} did not answer with a chat completion for model {self.name!r} "
                f"(it sent {_sketch(response)}); is --api-base an OpenAI-compatible /v1 URL?",
                endpoint=endpoint,
            )
        if not choices:
            raise BackendError(f"{endpoint} answered with no choices for model {self.name!r}", endpoint=endpoint)
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            raise BackendError(
                f"{endpoint} answered model {self.name!r} with a {type(content).__name__} as the "
                f"message content, where text was expected ({_sketch(content)})",
                endpoint=endpoint,
            )
        if not content:
            # Not an error (a model may stop at once), but never silent: an empty description.
            refusal = getattr(message, "refusal", None)
            log.warning(
                "%s answered model %r with no text (content %s, finish_reason %s%s)",
                endpoint,
                self.name,
                "null" if content is None else "empty",
                getattr(choices[0], "finish_reason", None),
                f", refusal: {_sketch(refusal)}" if refusal else "",
            )
        usage = getattr(response, "usage", None)
        if not isinstance(getattr(usage, "prompt_tokens", None), int) or not isinstance(
            getattr(usage, "completion_tokens", None), int
        ):
            usage = None
        return (content or "").strip(), usage

    def _message(self, prompt: str, images: Sequence[Image.Image]) -> dict[str, Any]:
        """A user message whose content interleaves text parts and ``image_url`` parts."""
        return self._prepared_message(prompt, [self.prepare_image(image, len(images)) for image in images])

    def _prepared_message(self, prompt: str, images: Sequence[Image.Image]) -> dict[str, Any]:
        urls = [data_url(image) for image in images]
        content = [
            {"type": "image_url", "image_url": {"url": urls[part]}}
            if isinstance(part, int)
            else {"type": "text", "text": part}
            for part in interleave(prompt, len(images))
        ]
        return {"role": "user", "content": content}

    def _with_retries(self, path: str, call: Callable[[], T]) -> T:
        """``call()``, retried with exponential backoff while its failures may be passing ones."""
        import openai

        endpoint = f"{self.api_base}{path}"
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            status: int | None = None
            try:
                return call()
            except openai.APIStatusError as error:
                failure: Exception = error
                status = error.status_code
                reason = f"HTTP {status}: {_status_detail(error)}"
                retry = status in RETRY_STATUSES or status >= 500
            except openai.APITimeoutError as error:
                failure, reason, retry = error, f"no answer within {self.request_timeout:g} s", True
            except openai.APIConnectionError as error:
                failure, reason, retry = error, f"cannot connect ({_root_cause(error)})", True
            except ValueError as error:  # the client's JSONDecodeError: a proxy's page, a broken server
                failure, reason, retry = error, f"the answer is not valid JSON ({error})", False
            if not retry:
                raise BackendError(
                    f"{endpoint} failed for model {self.name!r}: {reason}", endpoint=endpoint, status=status
                ) from failure
            if attempt == attempts:
                raise BackendError(
                    f"{endpoint} failed for model {self.name!r} after {attempts} attempt"
                    f"{'s' if attempts > 1 else ''}: {reason}",
                    endpoint=endpoint,
                    status=status,
                ) from failure
            delay = min(MAX_BACKOFF_SECONDS, self.retry_backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            # A server that says when to come back (429, 503) is believed, up to MAX_BACKOFF_SECONDS:
            # asking sooner only adds to its load (the openai client does the same with its retries).
            delay = max(delay, min(MAX_BACKOFF_SECONDS, _retry_after(failure)))
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", endpoint, reason, delay, attempt + 1, attempts)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _served_context_length(self) -> int | None:
        """The ``max_model_len`` the server lists for this model (vLLM does), if any.

        Raises:
            BackendError: the server cannot be reached at all.
        """
        endpoint = f"{self.api_base}/models"
        try:
            page = self._with_retries("/models", self.client.models.list)
        except (AttributeError, TypeError):  # the client choking on a body that is no model list
            raise BackendError(
                f"{endpoint} did not answer with a model list; is --api-base an OpenAI-compatible /v1 URL?",
                endpoint=endpoint,
            ) from None
        except BackendError as error:
            if error.status is None or error.status in (401, 403):  # unreachable, or a wrong key
                raise
            log.info("%s; assuming a %d-token context", error, DEFAULT_CONTEXT_LENGTH)
            return None
        data = getattr(page, "data", None)
        if not isinstance(data, list):  # JSON, but no model list
            raise BackendError(
                f"{endpoint} did not answer with a model list (it sent {_sketch(page)}); "
                "is --api-base an OpenAI-compatible /v1 URL?",
                endpoint=endpoint,
            )
        served = [model for model in data if getattr(model, "id", None) == self.name]
        if not served:
            if not data:  # servers that load models on demand (transformers serve) list none
                log.info(
                    "%s/models lists no models; assuming a %d-token context", self.api_base, DEFAULT_CONTEXT_LENGTH
                )
            else:
                names = ", ".join(str(getattr(model, "id", model)) for model in data)
                log.warning("%s/models does not list %r (it lists: %s)", self.api_base, self.name, names)
            return None
        root = getattr(served[0], "root", None)
        self._root = root if isinstance(root, str) else None
        length = getattr(served[0], "max_model_len", None)
        return length if isinstance(length, int) and length > 0 else None

    # -- sizes --------------------------------------------------------------------------------

    def count_tokens(self, prompt: str, image_sizes: Sequence[tuple[int, int]] = ()) -> int:
        """An estimate: a token per 3 characters, a message's overhead, and the images' tokens.

        The remote tokenizer is out of reach; the text estimate leans high for English. Images
        take ``image_tokens`` each, or for DeepSeek-VL2 exactly what its processor makes of
        frames of these sizes (after :meth:`prepare_image`). A prompt that is still too long
        is refused by the server, as a :class:`BackendError`.
        """
        text = prompt.replace(IMAGE_PLACEHOLDER, "")
        return math.ceil(len(text) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS + self._image_tokens(image_sizes)

    def _image_tokens(self, image_sizes: Sequence[tuple[int, int]]) -> int:
        if self.deepseek_vl2:
            return sum(self.geometry.image_tokens(size, len(image_sizes)) for size in image_sizes)
        return self.image_tokens * len(image_sizes)

    def max_image_tokens(self, num_images: int) -> int:
        """The per-image estimate times ``num_images``; DeepSeek-VL2's worst tiling for it."""
        if self.deepseek_vl2:
            return self.geometry.max_image_tokens(num_images, self.context_length)
        return self.image_tokens * num_images

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """Frames shrunk to ``max_image_side``: the server would resize them anyway, after the upload.

        DeepSeek-VL2, as the in-process runtime: with more than two images a prompt it sees each
        as one 384-pixel tile, so frames go at that size (a tenth of the upload of a 1024-pixel
        frame); with two, a frame whose tiling would leave no room for both in the context is
        shrunk to the best tiling that does (the server's processor then picks that or smaller).
        """
        if self.deepseek_vl2 and num_images > 2:
            return self.geometry.prepare_image(image, num_images, self.context_length)
        image = shrink(image, self.max_image_side)
        if self.deepseek_vl2:
            image = self.geometry.prepare_image(image, num_images, self.context_length)
        return image


def is_deepseek_vl2(name: str) -> bool:
    """Whether a served name or checkpoint path names a DeepSeek-VL2 model."""
    flat = name.lower().replace("_", "-")
    return "deepseek-vl2" in flat or "deepseek-vl-v2" in flat


def _local_geometry(root: str | None) -> ImageGeometry | None:
    """The image settings of the checkpoint the server names, when it is a directory here."""
    if not root or not (Path(root) / "processor_config.json").is_file():
        return None
    try:
        return ImageGeometry.from_checkpoint(root)
    except (OSError, ValueError) as error:
        log.warning("ignoring %s/processor_config.json: %s", root, error)
        return None


def data_url(image: Image.Image) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URL, the inline form chat APIs accept."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _status_detail(error: Any) -> str:
    """The server's own words: OpenAI's ``error.message``, FastAPI's ``detail``, or the summary."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        for key in ("detail", "message", "error"):
            if body.get(key):
                return str(body[key])
    return str(getattr(error, "message", "") or error)


def _retry_after(error: Exception) -> float:
    """Seconds the server's ``Retry-After`` (or ``retry-after-ms``) header asks for; 0 when none.

    Only the seconds form: an HTTP date there is rare, and ignoring it falls back to our backoff.
    """
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) * scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    return 0.0


def _sketch(value: Any) -> str:
    """A short, one-line picture of what a server sent: its type and its first characters."""
    text = " ".join(str(value).split())
    return f"{type(value).__name__} {text[:60]!r}{'...' if len(text) > 60 else ''}"


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__
