"""Captioning options: one frozen dataclass shared by the BMF module, the CLI and the library.

BMF hands a module its options as a JSON-like dict, so :meth:`CaptionOptions.from_mapping`
checks names and types itself and turns every mistake into an :class:`InvalidOptionError`
that names the option and what it accepts, before any model is loaded or frame decoded.

Each option is described once, in its field (:func:`option`): its default, its help, its CLI
flag and its roles (live only, fingerprinted, what library mode does with it), which the
modules acting on them ask for with :func:`options_with_role`. docs/options.md's table is
generated from the fields: ``python -m videocaption.options --update docs/options.md``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from videocaption.errors import InvalidOptionError

# -- Allowed values and defaults, defined here once: the modules that act on them import them.

# The checkpoint a run uses unless told otherwise (a hub id; a local directory works too).
DEFAULT_MODEL = "deepseek-ai/deepseek-vl2-tiny"
# The result file of the BMF module (an option dict without result_path) and of the CLI.
DEFAULT_RESULT_PATH = "result.json"
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")  # int8: int8 weights, bfloat16 activations (CPU)
# What the decoder may leave undecoded (videocaption/media/decoding.py) and hardware decoding.
DECODE_SKIPS = ("auto", "none", "nonref", "seek")
HWACCELS = ("auto", "none", "cuda")
# Speech recognisers (videocaption/audio/recognizers.py) and the default Whisper checkpoint.
ASR_BACKENDS = ("whisper", "openai")
DEFAULT_ASR_MODEL = "openai/whisper-small"
DEFAULT_BATCH_PROMPT = (
    "These are frames sampled in order from a video. Describe what happens in them in two or three sentences."
)
DEFAULT_SUMMARY_PROMPT = (
    "Above are descriptions of consecutive parts of one video, in order. "
    "Summarize what happens in the whole video in one paragraph."
)
DEFAULT_TITLE_PROMPT = "Give the video described above a short title of at most ten words. Answer with the title only."

# What each value means is said once, in the help of its option below.
BACKENDS = ("deepseek_vl2", "transformers", "openai")  # videocaption/backends/
SAMPLINGS = ("uniform", "adaptive")  # videocaption/sampling/samplers.py
SUBTITLES = ("captions", "speech", "both")
# Where the HTML report's pictures go (videocaption/outputs/report.py): in the page, or in a folder beside it.
REPORT_IMAGES = ("embed", "folder")
# With multithreading on and no max_threads given, this many batches run together.
DEFAULT_PARALLEL_BATCHES = 4


# An option's roles, kept in its field's metadata (see :func:`option`) and asked for with
# :func:`options_with_role`: the modules acting on a role hold no list of names of their own.
ROLES = ("live_only", "fingerprint", "library")
# library mode: "passed" to every worker as given, set "per_video" by the worker (its own
# result, subtitles and resume), or "refused" (the command line stops with one line).
LIBRARY_ROLES = ("passed", "per_video", "refused")


def option(
    default: Any,
    help: str,
    /,
    *,
    flag: str | None = "",
    live_only: bool = False,
    fingerprint: bool | str = False,
    library: str = "passed",
    repr: bool = True,
    **argparse_kwargs: Any,
) -> Any:
    """A field of :class:`CaptionOptions` with its one description, its roles and its CLI flag.

    Args:
        default: the one default of the option, for the module, the library and the CLI.
        help: what it does, written once: ``--help``, and docs/options.md (argparse's
            ``%(default)s`` works).
        flag: the CLI flag; "" derives ``--batch-size`` from ``batch_size``; None: no flag.
        live_only: only a live run reads it; a file run refuses it when it is not the default.
        fingerprint: True: it shapes the descriptions, so a checkpoint made with another value
            is not resumed; "adaptive": the same, with adaptive sampling only.
        library: what library mode does with it (one of :data:`LIBRARY_ROLES`).
        repr: False keeps the value out of ``repr()`` (a secret).
        argparse_kwargs: anything else ``add_argument`` needs (``type``, ``choices``, ...; a
            ``default`` here is the flag's own, where the command line differs from the library).
    """
    if library not in LIBRARY_ROLES or fingerprint not in (False, True, "adaptive"):
        raise ValueError(f"option roles: library={library!r}, fingerprint={fingerprint!r}")
    metadata = {
        "help": help,
        "flag": flag,
        "argparse": argparse_kwargs,
        "live_only": live_only,
        "fingerprint": fingerprint,
        "library": library,
    }
    return dataclasses.field(default=default, repr=repr, metadata=metadata)


@dataclass(frozen=True)
class CaptionOptions:
    """Every option of a run: its default, its one description, its roles and its CLI flag."""

    batch_size: int = option(4, "frames described together in one prompt (default: %(default)s)", fingerprint=True)
    # None: no result file and no checkpoint (what caption_video does unless asked). The BMF
    # module and the CLI write DEFAULT_RESULT_PATH unless told otherwise.
    result_path: str | None = option(
        None,
        "result file (default: %(default)s)",
        flag="--output",
        library="per_video",
        metavar="PATH",
        default=DEFAULT_RESULT_PATH,
    )
    multithreading: bool = option(False, "describe several batches at once in one batched model call")
    max_threads: int | None = option(
        None, f"batches in flight with --multithreading (default: {DEFAULT_PARALLEL_BATCHES})", type=int
    )
    pass_through: bool = option(False, "forward every input packet unchanged on the outputs", flag=None)
    fps: float = option(1.0, "frames sampled per second of video (default: %(default)s)", fingerprint=True)
    sampling: str = option(
        "uniform",
        "uniform: every sampled frame goes to the model; adaptive: batches end at hard cuts and "
        "near-duplicate frames are skipped (default: %(default)s)",
        fingerprint="adaptive",
        choices=SAMPLINGS,
    )
    # Lower finds subtler cuts but splits fast motion and flashes into shots; higher misses
    # cuts between similar-looking shots.
    scene_threshold: float = option(
        30.0,
        "adaptive: mean luma change (0-255) between consecutive frames that counts as a cut (default: %(default)s)",
        fingerprint="adaptive",
    )
    # Higher skips more (cheaper) but can miss a small change (a gesture, a new line on a
    # slide); 0 skips only frames with no visible change.
    duplicate_threshold: float = option(
        0.02,
        "adaptive: changed fraction of the picture (0-1) up to which a frame "
        "is a near-duplicate of the last one sent (default: %(default)s)",
        fingerprint="adaptive",
    )
    max_gap: float = option(
        10.0,
        "adaptive: seconds after which a frame is sent even if nothing changed (default: %(default)s)",
        fingerprint="adaptive",
    )
    decode_skip: str = option(
        "auto",
        "frames the decoder may leave undecoded: auto (at a constant frame rate: "
        "seek when samples lie a keyframe interval apart, else nonref with 8+ frames "
        "per sample), none, nonref, seek (default: %(default)s)",
        choices=DECODE_SKIPS,
    )
    # none by default until the NVDEC path has run once: it is written but untested (no GPU here).
    hwaccel: str = option(
        "none",
        "hardware decoding: none, cuda, or auto (cuda with BabitMF-GPU and a GPU; untested) (default: %(default)s)",
        choices=HWACCELS,
    )
    model: str = option(
        DEFAULT_MODEL,
        "hub id or local directory of the checkpoint; with --backend openai, the "
        "served model name (default: %(default)s)",
        fingerprint=True,
    )
    device: str = option(
        "auto", f"{', '.join(DEVICES)} or cuda:N; auto: cuda, then mps, then cpu (default: %(default)s)"
    )
    dtype: str = option(
        "auto",
        "auto: bfloat16 on CUDA, float32 elsewhere; int8: int8 weights with bfloat16 "
        "activations, deepseek_vl2 on CPU (docs/performance.md) (default: %(default)s)",
        fingerprint=True,
        choices=DTYPES,
    )
    max_new_tokens: int = option(256, "longest answer of each model call (default: %(default)s)", fingerprint=True)
    prompt: str = option(DEFAULT_BATCH_PROMPT, "instruction for each batch of frames", fingerprint=True)
    summary_prompt: str = option(DEFAULT_SUMMARY_PROMPT, "instruction for the summary pass")
    title_prompt: str = option(DEFAULT_TITLE_PROMPT, "instruction for the title pass")
    time_aware: bool = option(
        True,
        "do not tell the model the time of each frame (time_aware: tell it)",
        flag="--no-time-aware",
        fingerprint=True,
    )
    backend: str = option(
        "deepseek_vl2",
        "deepseek_vl2: the in-process runtime; transformers: any image-text-to-text model of "
        "transformers; openai: an OpenAI-compatible server such as vLLM (default: %(default)s)",
        choices=BACKENDS,
    )
    api_base: str | None = option(None, "openai backend: the server's URL, e.g. http://localhost:8000/v1")
    # No flag of its own: the CLI's --api-key goes through the environment, never into BMF's
    # options (BMF prints those), and result.json never has it.
    api_key: str | None = option(
        None, "openai backend: the key (default: $OPENAI_API_KEY, else none)", flag=None, repr=False
    )
    request_timeout: float = option(120.0, "openai backend: seconds one request may take (default: %(default)s)")
    max_retries: int = option(
        3,
        "openai backend: retries after 429, 5xx, timeouts, refused connections "
        "(default: %(default)s); with --multithreading, --max-threads requests are in flight",
    )
    srt_path: str | None = option(
        None,
        "also write SRT subtitles (alone: beside the result file)",
        flag="--srt",
        library="per_video",
        nargs="?",
        metavar="PATH",
    )
    vtt_path: str | None = option(
        None,
        "also write WebVTT subtitles (alone: beside the result file)",
        flag="--vtt",
        library="per_video",
        nargs="?",
        metavar="PATH",
    )
    report_path: str | None = option(
        None,
        "also write an HTML report: the frames, timeline and text of each batch (alone: beside the result file)",
        flag="--report",
        library="per_video",
        nargs="?",
        metavar="PATH",
    )
    # embed by default: one self-contained file to open, mail or attach (about 3-5 KB a frame);
    # folder keeps the page small for long videos and live runs (each rewrite adds new pictures only).
    report_images: str = option(
        "embed",
        "where the report's pictures go: embed (in the page) or folder "
        "(REPORT_files/ beside it) (default: %(default)s)",
        choices=REPORT_IMAGES,
    )
    events: bool = option(
        False,
        "also describe each batch as a JSON object (summary, objects, people, actions, on-screen "
        "text, camera, setting) that always follows the events schema: constrained decoding in "
        "process, response_format with a server (docs/events.md)",
        fingerprint=True,
    )
    events_schema: str | None = option(
        None,
        "with --events: your JSON Schema file instead of the shipped one (checked before any decoding)",
        fingerprint=True,
        metavar="FILE",
    )
    transcribe: bool = option(False, "transcribe the speech in the audio and give it to the prompts")
    asr_backend: str = option(
        "whisper",
        "whisper: a Whisper checkpoint in this process; openai: an "
        "OpenAI-compatible /v1/audio/transcriptions endpoint (default: %(default)s)",
        choices=ASR_BACKENDS,
    )
    asr_model: str = option(
        DEFAULT_ASR_MODEL,
        "Whisper hub id or local directory; with --asr-backend openai, the served model name (default: %(default)s)",
    )
    asr_api_base: str | None = option(None, "asr openai backend: the server's URL (default: --api-base)")
    language: str | None = option(None, "spoken language (ISO code, e.g. en); default: detected")
    subtitles: str = option("captions", "what --srt/--vtt cues hold (default: %(default)s)", choices=SUBTITLES)
    summary_max_prompt_tokens: int | None = option(None, "cap on summary prompts (default: what fits)", flag=None)
    resume: bool = option(
        False, "continue an interrupted run from its checkpoint (RESULT.partial)", library="per_video"
    )
    video_end: float | None = option(
        None,
        "seconds where the video stream ends (the CLI probes it): the last "
        "subtitle cue ends there at the latest; unset, one sampling interval "
        "after its last frame",
        flag=None,
        library="per_video",
    )
    live: bool = option(
        False,
        "caption the input as a live stream: a file that is still growing (live URLs are always live)",
        library="refused",
    )
    jsonl_path: str | None = option(
        None,
        "live: append each described batch and summary to this JSONL file as it happens ('-': stdout)",
        flag="--jsonl",
        live_only=True,
        metavar="PATH",
    )
    summary_every: float | None = option(
        None,
        "live: every SECONDS of stream, a summary of that window as its own record",
        live_only=True,
        metavar="SECONDS",
        type=float,
    )
    summary_all: bool = option(
        False, "live: with each --summary-every summary, also summarise everything so far", live_only=True
    )
    reconnect: int = option(
        3,
        "live: reconnect attempts (with backoff) when the stream drops, stalls or cannot be "
        "reached, before giving up (default: %(default)s)",
        live_only=True,
    )
    reconnect_delay: float = option(
        1.0,
        "live: seconds before the first reconnect attempt, doubling each time up to 30 (default: %(default)s)",
        live_only=True,
    )
    stall_timeout: float = option(
        15.0, "live: seconds without a frame before the stream counts as stalled (default: %(default)s)", live_only=True
    )
    max_pending_frames: int | None = option(
        None,
        "live: sampled frames waiting for the model at most; when more arrive the oldest are dropped "
        "(default: twice --batch-size)",
        live_only=True,
        type=int,
    )

    @property
    def batches_in_flight(self) -> int:
        """``max_threads`` as given, else 1, or DEFAULT_PARALLEL_BATCHES with multithreading."""
        if self.max_threads is not None:
            return self.max_threads
        return DEFAULT_PARALLEL_BATCHES if self.multithreading else 1

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, minimum=1)
        if self.result_path is not None:
            _check_str("result_path", self.result_path)
        _check_bool("multithreading", self.multithreading)
        _check_bool("pass_through", self.pass_through)
        _check_bool("time_aware", self.time_aware)
        _check_bool("resume", self.resume)
        if self.resume and self.result_path is None:
            raise InvalidOptionError(
                "resume needs result_path: the checkpoint it continues from is kept beside "
                "the result file (RESULT.partial)"
            )
        if self.summary_max_prompt_tokens is not None:
            _check_int("summary_max_prompt_tokens", self.summary_max_prompt_tokens, minimum=1)
        for name in ("srt_path", "vtt_path", "report_path"):
            if getattr(self, name) is not None:
                _check_str(name, getattr(self, name))
        self._check_distinct_outputs()
        if self.report_images not in REPORT_IMAGES:
            raise InvalidOptionError(
                f"report_images must be one of {', '.join(REPORT_IMAGES)}, got {self.report_images!r}"
            )
        if self.max_threads is not None:
            _check_int("max_threads", self.max_threads, minimum=1)
            if not self.multithreading and self.max_threads != 1:
                raise InvalidOptionError(
                    f"max_threads needs multithreading (max_threads is {self.max_threads} but multithreading "
                    "is off); set multithreading to true to describe several batches at once"
                )
        _check_positive("fps", self.fps)
        self._check_sampling()
        if self.video_end is not None:
            _check_positive("video_end", self.video_end)
        _check_str("model", self.model)
        _check_str("device", self.device)
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise InvalidOptionError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise InvalidOptionError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        for name in ("prompt", "summary_prompt", "title_prompt"):
            _check_str(name, getattr(self, name))
        self._check_backend()
        _check_bool("events", self.events)
        if self.events_schema is not None:
            _check_str("events_schema", self.events_schema)
            if not self.events:
                raise InvalidOptionError("events_schema needs events (the schema the batch events follow)")
        self._check_live()
        self._check_speech()

    def _check_speech(self) -> None:
        _check_bool("transcribe", self.transcribe)
        if self.asr_backend not in ASR_BACKENDS:
            raise InvalidOptionError(f"asr_backend must be one of {', '.join(ASR_BACKENDS)}, got {self.asr_backend!r}")
        _check_str("asr_model", self.asr_model)
        for name in ("asr_api_base", "language"):
            if getattr(self, name) is not None:
                _check_str(name, getattr(self, name))
        if self.transcribe and self.asr_backend == "openai" and not (self.asr_api_base or self.api_base):
            raise InvalidOptionError("the openai asr_backend needs asr_api_base (or api_base), the server's URL")
        if self.subtitles not in SUBTITLES:
            raise InvalidOptionError(f"subtitles must be one of {', '.join(SUBTITLES)}, got {self.subtitles!r}")

    def _check_distinct_outputs(self) -> None:
        """result_path, srt_path, vtt_path, report_path, jsonl_path and the checkpoint beside the result: different files."""
        seen = (
            {}
            if self.result_path is None
            else {os.path.abspath(self.result_path + ".partial"): "the checkpoint (result_path + .partial)"}
        )
        for name in ("result_path", "srt_path", "vtt_path", "report_path", "jsonl_path"):
            path = getattr(self, name)
            if path is None or path == "-":
                continue
            key = os.path.abspath(path)
            if key in seen:
                raise InvalidOptionError(
                    f"{name} {path!r} is the same file as {seen[key]}; give each output its own name"
                )
            seen[key] = name

    def _check_sampling(self) -> None:
        for name, allowed in (("sampling", SAMPLINGS), ("decode_skip", DECODE_SKIPS), ("hwaccel", HWACCELS)):
            if getattr(self, name) not in allowed:
                raise InvalidOptionError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        _check_positive("scene_threshold", self.scene_threshold)
        if self.scene_threshold > 255:
            raise InvalidOptionError(f"scene_threshold is a luma change, at most 255, got {self.scene_threshold!r}")
        _check_fraction("duplicate_threshold", self.duplicate_threshold)
        _check_positive("max_gap", self.max_gap, unit=" of seconds")

    def _check_live(self) -> None:
        _check_bool("live", self.live)
        _check_bool("summary_all", self.summary_all)
        if self.jsonl_path is not None:
            _check_str("jsonl_path", self.jsonl_path)
        if self.summary_every is not None:
            _check_positive("summary_every", self.summary_every, unit=" of seconds")
        elif self.summary_all:
            raise InvalidOptionError("summary_all needs summary_every (how often to summarise)")
        _check_int("reconnect", self.reconnect, minimum=0)
        _check_positive("reconnect_delay", self.reconnect_delay, unit=" of seconds")
        _check_positive("stall_timeout", self.stall_timeout, unit=" of seconds")
        if self.max_pending_frames is not None:
            _check_int("max_pending_frames", self.max_pending_frames, minimum=self.batch_size)

    @property
    def pending_frames(self) -> int:
        """``max_pending_frames`` as given, else two batches."""
        return self.max_pending_frames if self.max_pending_frames is not None else 2 * self.batch_size

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
        _check_positive("request_timeout", self.request_timeout, unit=" of seconds")
        _check_int("max_retries", self.max_retries, minimum=0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> CaptionOptions:
        """Build options from a BMF option dict, refusing unknown names.

        The BMF module's contract: its result goes to ``result_path``, ``result.json`` when the
        dict has none.

        Args:
            values: option names to values, as a BMF graph passes them.

        Raises:
            InvalidOptionError: an unknown name, a wrong type or a value out of range.
        """
        values = dict(values or {})
        check_option_names(values)
        # A module always writes its result file: result.json unless named (and never None).
        result_path = values.pop("result_path", DEFAULT_RESULT_PATH)
        _check_str("result_path", result_path)
        return cls(result_path=result_path, **values)

    def replace(self, **changes: Any) -> CaptionOptions:
        """Return a copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {field.name: field for field in dataclasses.fields(CaptionOptions)}


def check_option_names(names: Iterable[str]) -> None:
    """Refuse names that are no :class:`CaptionOptions` field (a typo must not pass unnoticed).

    Raises:
        InvalidOptionError: naming the unknown ones and listing the known ones.
    """
    unknown = sorted(set(names) - set(_FIELDS))
    if unknown:
        raise InvalidOptionError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(_FIELDS))}"
        )


def options_with_role(role: str, value: Any = True) -> tuple[str, ...]:
    """The names of the options whose ``role`` (one of :data:`ROLES`) is ``value``, in field order.

    ``options_with_role("live_only")``, ``options_with_role("fingerprint", "adaptive")``,
    ``options_with_role("library", "per_video")``.
    """
    if role not in ROLES:
        raise ValueError(f"unknown option role {role!r}; roles: {', '.join(ROLES)}")
    return tuple(field.name for field in dataclasses.fields(CaptionOptions) if field.metadata[role] == value)


def options_changed(options: CaptionOptions, names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` that ``options`` sets to something other than their default."""
    return [name for name in names if getattr(options, name) != _FIELDS[name].default]


def cli_flag(field: dataclasses.Field) -> str | None:
    """The command-line flag of an option (``--batch-size``), or None when it has none."""
    flag = field.metadata["flag"]
    return None if flag is None else flag or "--" + field.name.replace("_", "-")


# -- The options reference (docs/options.md), generated from the fields so that it cannot drift.

TABLE_BEGIN = "<!-- options table: generated by `python -m videocaption.options --update docs/options.md` -->"
TABLE_END = "<!-- end of options table -->"


def options_table_markdown() -> str:
    """A Markdown table of every option: name, flag, default, allowed values, roles, description."""
    rows = ["| option | CLI flag | default | allowed | roles | description |", "|---|---|---|---|---|---|"]
    for field in dataclasses.fields(CaptionOptions):
        flag = cli_flag(field)
        rows.append(
            "| "
            + " | ".join(
                [
                    f"`{field.name}`",
                    f"`{flag}`" if flag else "-",
                    _cell_default(field),
                    _cell_allowed(field),
                    _cell_roles(field),
                    _cell_description(field),
                ]
            )
            + " |"
        )
    return "\n".join(rows) + "\n"


def update_options_doc(text: str) -> str:
    """``text`` (docs/options.md) with the table between its markers replaced by the generated one.

    Raises:
        ValueError: the markers are missing.
    """
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the options doc has no table markers ({TABLE_BEGIN} ... {TABLE_END})")
    return text[:begin] + TABLE_BEGIN + "\n\n" + options_table_markdown() + "\n" + text[end:]


def _cell_default(field: dataclasses.Field) -> str:
    if "default" in field.metadata["argparse"]:  # result_path: the CLI's and the module's (see the description)
        return f"`{field.metadata['argparse']['default']}`"
    if field.default is None:
        return "none"
    if isinstance(field.default, bool):
        return "true" if field.default else "false"
    if isinstance(field.default, str) and len(field.default) > 40:  # the prompts
        return "see `videocaption/options.py`"
    return f"`{field.default}`"


def _cell_allowed(field: dataclasses.Field) -> str:
    choices = field.metadata["argparse"].get("choices")
    if choices:
        return ", ".join(f"`{choice}`" for choice in choices)
    return field.type.replace(" | None", " or none")  # the annotation: "int", "float or none", ...


def _cell_roles(field: dataclasses.Field) -> str:
    roles = []
    if field.metadata["live_only"]:
        roles.append("live only")
    if field.metadata["fingerprint"] is True:
        roles.append("fingerprinted")
    elif field.metadata["fingerprint"] == "adaptive":
        roles.append("fingerprinted (adaptive)")
    if field.metadata["library"] != "passed":
        roles.append("library: " + field.metadata["library"].replace("_", " "))
    return ", ".join(roles) or "-"


def _cell_description(field: dataclasses.Field) -> str:
    text = field.metadata["help"].replace(" (default: %(default)s)", "").replace("%(default)s", str(field.default))
    if "default" in field.metadata["argparse"]:
        text += f"; the Python API's default is {field.default} (caption_video writes no file unless asked)"
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    """``python -m videocaption.options --markdown`` prints the table; ``--update FILE`` rewrites it there."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m videocaption.options", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the options table")
    group.add_argument("--update", metavar="FILE", help="rewrite the table between the markers in FILE")
    args = parser.parse_args(argv)
    if args.markdown:
        print(options_table_markdown(), end="")
        return 0
    path = Path(args.update)
    path.write_text(update_options_doc(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidOptionError(f"{name} must be at least {minimum}, got {value}")


def _check_positive(name: str, value: Any, *, unit: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"{name} must be a positive number{unit}, got {value!r}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidOptionError(f"{name} must be a number from 0 to 1, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false, got {value!r}")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(f"{name} must be a non-empty string, got {value!r}")


if __name__ == "__main__":
    raise SystemExit(main())
