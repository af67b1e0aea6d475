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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

from PIL import Image, ImageOps

from ..errors import BackendError
from ..prompts import IMAGE_PLACEHOLDER
from .messages import DEFAULT_MAX_IMAGE_SIDE, interleave, shrink

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
# DeepSeek-VL2's image tokens follow from its processor settings, the same for -tiny, -small and the
# base model (processor_config.json): 384-pixel tiles of 14-pixel patches, downsampled by 2, and
# these tilings (width x height, in tiles) for prompts of one or two images; with more images each
# is one global view plus one local tile.
DEEPSEEK_VL2_TILE = 384
DEEPSEEK_VL2_TOKENS_PER_SIDE = 14  # ceil((384 // 14) / 2)
DEEPSEEK_VL2_TILINGS = (
    (1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1), (2, 2), (1, 5), (5, 1), (1, 6), (6, 1),
    (2, 3), (3, 2), (1, 7), (7, 1), (1, 8), (8, 1), (2, 4), (4, 2), (1, 9), (9, 1), (3, 3),
)
# As the in-process runtime: two-frame prompts keep this many tokens for the text and the answer,
# and their frames are shrunk to tilings of as many tiles as then fit the context.
DEEPSEEK_VL2_PAIR_TEXT_RESERVE = 512
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
        request_timeout: float = 120.0,
        max_retries: int = 3,
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
            is_deepseek_vl2(name) for name in (self.name, self._root) if name)

    # -- requests -----------------------------------------------------------------------------

    def describe_batch(
        self, requests: Sequence[tuple[Sequence[Image.Image], str]], *, max_new_tokens: int
    ) -> list[str]:
        """Send every request at once, one thread each, and return the answers in order.

        Raises:
            BackendError: a request still failed after its retries (the others are finished first).
            ValueError: a prompt has more placeholders than images.
        """
        messages = [self._message(prompt, images) for images, prompt in requests]
        return self._concurrently(messages, max_new_tokens)

    def complete_batch(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Text-only prompts, sent concurrently like :meth:`describe_batch`.

        Raises:
            BackendError: a request still failed after its retries.
        """
        return self._concurrently([{"role": "user", "content": prompt} for prompt in prompts], max_new_tokens)

    def _concurrently(self, messages: list[dict[str, Any]], max_new_tokens: int) -> list[str]:
        if len(messages) <= 1:
            return [self.complete(message, max_new_tokens) for message in messages]
        with ThreadPoolExecutor(max_workers=len(messages), thread_name_prefix="llm_caption_request") as pool:
            futures = [pool.submit(self.complete, message, max_new_tokens) for message in messages]
            return [future.result() for future in futures]

    def complete(self, message: dict[str, Any], max_new_tokens: int) -> str:
        """One chat completion for one user message, greedy, with retries.

        Raises:
            BackendError: it failed ``max_retries + 1`` times, or once in a way retrying cannot fix.
        """
        response = self._with_retries(
            "/chat/completions",
            lambda: self.client.chat.completions.create(
                model=self.name, messages=[message], max_tokens=max_new_tokens, temperature=0.0,
            ),
        )
        if not response.choices:
            endpoint = f"{self.api_base}/chat/completions"
            raise BackendError(f"{endpoint} answered with no choices for model {self.name!r}", endpoint=endpoint)
        return (response.choices[0].message.content or "").strip()

    def _message(self, prompt: str, images: Sequence[Image.Image]) -> dict[str, Any]:
        """A user message whose content interleaves text parts and ``image_url`` parts."""
        urls = [data_url(self.prepare_image(image, len(images))) for image in images]
        content = [
            {"type": "image_url", "image_url": {"url": urls[part]}} if isinstance(part, int)
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
            if not retry:
                raise BackendError(f"{endpoint} failed for model {self.name!r}: {reason}",
                                   endpoint=endpoint, status=status) from failure
            if attempt == attempts:
                raise BackendError(
                    f"{endpoint} failed for model {self.name!r} after {attempts} attempt"
                    f"{'s' if attempts > 1 else ''}: {reason}",
                    endpoint=endpoint, status=status,
                ) from failure
            delay = min(MAX_BACKOFF_SECONDS, self.retry_backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", endpoint, reason, delay, attempt + 1, attempts)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _served_context_length(self) -> int | None:
        """The ``max_model_len`` the server lists for this model (vLLM does), if any.

        Raises:
            BackendError: the server cannot be reached at all.
        """
        try:
            page = self._with_retries("/models", self.client.models.list)
        except BackendError as error:
            if error.status is None or error.status in (401, 403):  # unreachable, or a wrong key
                raise
            log.info("%s; assuming a %d-token context", error, DEFAULT_CONTEXT_LENGTH)
            return None
        served = [model for model in page.data if model.id == self.name]
        if not served:
            if not page.data:  # servers that load models on demand (transformers serve) list none
                log.info("%s/models lists no models; assuming a %d-token context", self.api_base, DEFAULT_CONTEXT_LENGTH)
            else:
                names = ", ".join(model.id for model in page.data)
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
        if self.deepseek_vl2:
            images = sum(deepseek_vl2_image_tokens(size, len(image_sizes)) for size in image_sizes)
        else:
            images = self.image_tokens * len(image_sizes)
        return math.ceil(len(text) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS + images

    def max_image_tokens(self, num_images: int) -> int:
        """The per-image estimate times ``num_images``; DeepSeek-VL2's worst tiling for it."""
        if self.deepseek_vl2:
            if num_images == 2:  # frames shrunk to the pair tilings by prepare_image
                return 2 * max(deepseek_vl2_tiling_tokens(w, h) for w, h in deepseek_vl2_pair_tilings(self.context_length))
            return num_images * deepseek_vl2_image_tokens(None, num_images)
        return self.image_tokens * num_images

    def prepare_image(self, image: Image.Image, num_images: int) -> Image.Image:
        """Frames shrunk to ``max_image_side``: the server would resize them anyway, after the upload.

        DeepSeek-VL2, as the in-process runtime: with more than two images a prompt it sees each
        as one 384-pixel tile, so frames go at that size (a tenth of the upload of a 1024-pixel
        frame); with two, a frame whose tiling would leave no room for both in the context is
        shrunk to the best tiling that does (the server's processor then picks that or smaller).
        """
        if self.deepseek_vl2 and num_images > 2:
            return ImageOps.contain(image.convert("RGB"), (DEEPSEEK_VL2_TILE, DEEPSEEK_VL2_TILE),
                                    method=Image.Resampling.BICUBIC) if max(image.size) > DEEPSEEK_VL2_TILE else image
        image = shrink(image, self.max_image_side)
        if self.deepseek_vl2 and num_images == 2:
            from ..deepseek_vl2.processor import select_best_resolution

            allowed = [(w * DEEPSEEK_VL2_TILE, h * DEEPSEEK_VL2_TILE) for w, h in deepseek_vl2_pair_tilings(self.context_length)]
            if select_best_resolution(image.size, _deepseek_vl2_candidates()) not in allowed:
                target = select_best_resolution(image.size, allowed)
                image = ImageOps.contain(image.convert("RGB"), target, method=Image.Resampling.BICUBIC)
        return image


def is_deepseek_vl2(name: str) -> bool:
    """Whether a served name or checkpoint path names a DeepSeek-VL2 model."""
    flat = name.lower().replace("_", "-")
    return "deepseek-vl2" in flat or "deepseek-vl-v2" in flat


def deepseek_vl2_tiling_tokens(width_tiles: int, height_tiles: int) -> int:
    """DeepSeek-VL2's tokens for one image tiled so: the global view's rows of 14 plus a newline
    each, a separator, and the local tiles' rows with a newline each."""
    n = DEEPSEEK_VL2_TOKENS_PER_SIDE
    return n * (n + 1) + 1 + (height_tiles * n) * (width_tiles * n + 1)


def deepseek_vl2_image_tokens(size: tuple[int, int] | None, num_images: int) -> int:
    """Tokens DeepSeek-VL2's processor gives one image of ``size`` (None: the worst size) in a
    prompt of ``num_images`` images; images are tiled only in prompts of one or two."""
    if num_images > 2:
        return deepseek_vl2_tiling_tokens(1, 1)
    if size is None:
        return max(deepseek_vl2_tiling_tokens(w, h) for w, h in DEEPSEEK_VL2_TILINGS)
    from ..deepseek_vl2.processor import select_best_resolution

    width, height = select_best_resolution(size, _deepseek_vl2_candidates())
    return deepseek_vl2_tiling_tokens(width // DEEPSEEK_VL2_TILE, height // DEEPSEEK_VL2_TILE)


def deepseek_vl2_pair_tilings(context_length: int) -> list[tuple[int, int]]:
    """Tilings (in tiles) allowed in two-image prompts: those of up to as many tiles as lets two
    frames of any of them fit ``context_length`` with :data:`DEEPSEEK_VL2_PAIR_TEXT_RESERVE` to
    spare (the rule of the in-process runtime)."""
    budget = (context_length - DEEPSEEK_VL2_PAIR_TEXT_RESERVE) // 2
    for max_tiles in sorted({w * h for w, h in DEEPSEEK_VL2_TILINGS}, reverse=True):
        allowed = [(w, h) for w, h in DEEPSEEK_VL2_TILINGS if w * h <= max_tiles]
        if max(deepseek_vl2_tiling_tokens(w, h) for w, h in allowed) <= budget:
            return allowed
    return [(1, 1)]


def _deepseek_vl2_candidates() -> list[tuple[int, int]]:
    return [(w * DEEPSEEK_VL2_TILE, h * DEEPSEEK_VL2_TILE) for w, h in DEEPSEEK_VL2_TILINGS]


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


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__
