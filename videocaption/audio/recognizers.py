"""Speech recognisers behind one small interface, like the VLM backends.

``whisper``: a Whisper checkpoint through transformers, in this process (any hub id or local
directory; CPU, CUDA or MPS). ``openai``: an OpenAI-compatible ``/v1/audio/transcriptions``
endpoint, as vLLM serves Whisper. :func:`load_recognizer` shares one instance per process and
configuration.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import wave
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from videocaption.audio.samples import SAMPLE_RATE
from videocaption.errors import BackendError, ModelLoadError

log = logging.getLogger("llm_caption")

# Tokens of text one segment (at most 30 s of speech) may give.
MAX_SEGMENT_TOKENS = 200


@runtime_checkable
class SpeechRecognizer(Protocol):
    """What the transcriber asks of a recogniser."""

    name: str  # hub id, path or served model name

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> str:
        """The text spoken in ``audio`` (16 kHz mono float32, at most 30 s); "" when none."""


class WhisperRecognizer:
    """A Whisper checkpoint in this process (``WhisperForConditionalGeneration``).

    Raises:
        ModelLoadError: the checkpoint or its processor cannot be loaded.
    """

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto") -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from videocaption.backends.devices import resolve_device, resolve_dtype

        self.name = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            with transformers_quiet():
                self.processor = WhisperProcessor.from_pretrained(model)
                self.model = WhisperForConditionalGeneration.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load the Whisper model {model!r}: {str(error).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        self._torch = torch
        # A checkpoint may cap its answers itself (the tests' tiny one does).
        self._max_new_tokens = self.model.generation_config.max_new_tokens or MAX_SEGMENT_TOKENS
        self._lock = threading.Lock()  # one generate at a time per model

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> str:
        features = self.processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        features = features.to(self.device, self.dtype)  # (1, n_mels, 3000)
        with self._lock, self._torch.inference_mode(), transformers_quiet():
            ids = self.model.generate(
                features, language=language, task="transcribe", max_new_tokens=self._max_new_tokens
            )
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


class OpenAIRecognizer:
    """A model served behind an OpenAI-compatible ``/v1/audio/transcriptions`` endpoint."""

    def __init__(
        self, model: str, api_base: str, api_key: str | None = None, *, timeout: float = 120.0, max_retries: int = 3
    ) -> None:
        import os

        from openai import OpenAI

        self.name = model
        self.endpoint = f"{api_base.rstrip('/')}/audio/transcriptions"
        self._client = OpenAI(
            base_url=api_base,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> str:
        """The text of ``audio``.

        Raises:
            BackendError: the request failed (after the client's retries), or the answer is no
                transcription: a web page or other text is never taken for speech (we ask for
                JSON, so text means something else answered). One line naming the endpoint.
        """
        import openai

        extra = {"language": language} if language else {}
        try:
            answer = self._client.audio.transcriptions.create(
                model=self.name, file=("speech.wav", wav_bytes(audio), "audio/wav"), **extra
            )
        except openai.APIStatusError as error:
            raise self._failed(f"HTTP {error.status_code}") from None
        except openai.APITimeoutError:
            raise self._failed(f"no answer within {self._client.timeout} s") from None
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            raise self._failed(f"cannot connect ({cause})") from None
        except (openai.OpenAIError, ValueError) as error:  # ValueError: the client's JSONDecodeError
            raise self._failed(f"{type(error).__name__}: {error}") from None
        text = getattr(answer, "text", None)
        if not isinstance(text, str):
            sketch = " ".join(str(answer).split())[:60]
            raise self._failed(f"the answer is no transcription ({type(answer).__name__} {sketch!r})")
        return text.strip()

    def _failed(self, reason: str) -> BackendError:
        return BackendError(
            f"{self.endpoint} failed for model {self.name!r}: {' '.join(reason.split())}", endpoint=self.endpoint
        )


@contextlib.contextmanager
def transformers_quiet() -> Iterator[None]:
    """No "Loading weights" bar and no advice or deprecation lines from transformers meanwhile.

    They are transformers' notes to a developer, printed on the user's terminal between the
    progress bar and our one-line messages; ``--verbose`` (the root logger at INFO) keeps them.
    """
    from transformers.utils import logging as hf_logging

    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def wav_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono float samples as a 16-bit WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes((np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


_cache: dict[tuple, SpeechRecognizer] = {}
_cache_lock = threading.Lock()


def load_recognizer(options) -> SpeechRecognizer:
    """The recogniser ``options`` name (``asr_backend``, ``asr_model``, ...), one per process.

    Raises:
        ModelLoadError: the Whisper checkpoint cannot be loaded.
    """
    if options.asr_backend == "openai":
        key = ("openai", options.asr_model, options.asr_api_base or options.api_base, options.api_key or "")
    else:
        key = ("whisper", options.asr_model, options.device, options.dtype)
    with _cache_lock:
        if key not in _cache:
            if options.asr_backend == "openai":
                _cache[key] = OpenAIRecognizer(
                    options.asr_model,
                    key[2],
                    options.api_key,
                    timeout=options.request_timeout,
                    max_retries=options.max_retries,
                )
            else:
                log.info("loading the speech recogniser %s", options.asr_model)
                _cache[key] = WhisperRecognizer(options.asr_model, options.device, options.dtype)
        return _cache[key]
