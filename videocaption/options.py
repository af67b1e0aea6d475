"""Captioning options: one frozen dataclass shared by the BMF module, the CLI and the library.

BMF hands a module its options as a JSON-like dict, so :meth:`CaptionOptions.from_mapping`
checks names and types itself and turns every mistake into an :class:`InvalidOptionError`
that names the option and what it accepts, before any model is loaded or frame decoded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .devices import DEFAULT_MODEL, DEVICES, DTYPES
from .errors import InvalidOptionError
from .prompts import DEFAULT_BATCH_PROMPT, DEFAULT_SUMMARY_PROMPT, DEFAULT_TITLE_PROMPT

# deepseek_vl2: the in-process runtime; transformers: any image-text-to-text model transformers
# loads; openai: a model served behind an OpenAI-compatible endpoint (vLLM, ...).
BACKENDS = ("deepseek_vl2", "transformers", "openai")
# With multithreading on and no max_threads given, this many batches run together.
DEFAULT_PARALLEL_BATCHES = 4


@dataclass(frozen=True)
class CaptionOptions:
    batch_size: int = 4  # frames described together in one prompt
    result_path: str = "result.json"  # where the module writes the result at end of stream
    multithreading: bool = False  # describe several batches at once (one batched model call)
    max_threads: int | None = None  # batches in flight: 1 when multithreading is off
    pass_through: bool = False  # forward every input packet unchanged on the outputs
    fps: float = 1.0  # frames sampled per second of video
    model: str = DEFAULT_MODEL  # hub id or local directory of a DeepSeek-VL2 checkpoint
    device: str = "auto"  # auto: cuda, then mps, then cpu; or cuda:N
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 elsewhere
    max_new_tokens: int = 256  # upper bound on each generated answer
    prompt: str = DEFAULT_BATCH_PROMPT  # asks for the description of one batch of frames
    summary_prompt: str = DEFAULT_SUMMARY_PROMPT  # turns the batch descriptions into a summary
    title_prompt: str = DEFAULT_TITLE_PROMPT  # turns the summary into a title
    time_aware: bool = True  # tell the model which seconds of the video the frames cover
    backend: str = "deepseek_vl2"  # one of BACKENDS
    api_base: str | None = None  # openai backend: the endpoint, e.g. http://localhost:8000/v1
    # openai backend: the key; OPENAI_API_KEY when unset. Kept out of repr; result.json never has it.
    api_key: str | None = dataclasses.field(default=None, repr=False)
    request_timeout: float = 120.0  # openai backend: seconds one request may take
    max_retries: int = 3  # openai backend: retries after 429, 5xx, timeouts and refused connections
    srt_path: str | None = None  # also write the batch descriptions as SRT subtitles
    vtt_path: str | None = None  # also write them as WebVTT subtitles
    summary_max_prompt_tokens: int | None = None  # cap on summary prompts (default: what fits)
    resume: bool = False  # continue from the checkpoint an interrupted run left next to result_path

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_str("result_path", self.result_path)
        _check_bool("multithreading", self.multithreading)
        _check_bool("pass_through", self.pass_through)
        _check_bool("time_aware", self.time_aware)
        _check_bool("resume", self.resume)
        if self.summary_max_prompt_tokens is not None:
            _check_int("summary_max_prompt_tokens", self.summary_max_prompt_tokens, minimum=1)
        for name in ("srt_path", "vtt_path"):
            if getattr(self, name) is not None:
                _check_str(name, getattr(self, name))
        if self.max_threads is None:
            parallel = DEFAULT_PARALLEL_BATCHES if self.multithreading else 1
            object.__setattr__(self, "max_threads", parallel)
        _check_int("max_threads", self.max_threads, minimum=1)
        if not self.multithreading and self.max_threads != 1:
            raise InvalidOptionError(
                f"max_threads is {self.max_threads} but multithreading is off; "
                "set multithreading to true to describe several batches at once"
            )
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)):
            raise InvalidOptionError(f"fps must be a number, got {self.fps!r}")
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise InvalidOptionError(f"fps must be a positive number, got {self.fps!r}")
        object.__setattr__(self, "fps", float(self.fps))
        _check_str("model", self.model)
        _check_str("device", self.device)
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise InvalidOptionError(
                f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}"
            )
        if self.dtype not in DTYPES:
            raise InvalidOptionError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        for name in ("prompt", "summary_prompt", "title_prompt"):
            _check_str(name, getattr(self, name))
        self._check_backend()

    def _check_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidOptionError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("api_base", "api_key"):
            if getattr(self, name) is not None:
                _check_str(name, getattr(self, name))
        if self.backend == "openai" and self.api_base is None:
            raise InvalidOptionError(
                "the openai backend needs api_base, the server's URL (e.g. http://localhost:8000/v1)"
            )
        timeout = self.request_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise InvalidOptionError(f"request_timeout must be a positive number of seconds, got {timeout!r}")
        object.__setattr__(self, "request_timeout", float(timeout))
        _check_int("max_retries", self.max_retries, minimum=0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> CaptionOptions:
        """Build options from a BMF option dict, refusing unknown names.

        Args:
            values: option names to values, as a BMF graph passes them.

        Raises:
            InvalidOptionError: an unknown name, a wrong type or a value out of range.
        """
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InvalidOptionError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"known options: {', '.join(sorted(names))}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> CaptionOptions:
        """Return a copy with some fields changed (and validated again)."""
        if not self.multithreading and "multithreading" in changes and "max_threads" not in changes:
            changes["max_threads"] = None
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidOptionError(f"{name} must be at least {minimum}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false, got {value!r}")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(f"{name} must be a non-empty string, got {value!r}")
