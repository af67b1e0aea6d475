"""The demo BMF graph: decode -> FFmpeg `select` (sampling at ``fps``) -> ``llm_caption`` module.

The module is loaded by path and entry like any BMF Python module, so this works from any
working directory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from videocaption.audio.samples import SAMPLE_RATE
from videocaption.errors import InvalidOptionError, ModelLoadError
from videocaption.media.decoding import AVDISCARD_ALL, choose_decode, decode_settings
from videocaption.sampling.grid import select_expression
from videocaption.options import CaptionOptions
from videocaption.media.probe import StreamTiming, ffmpeg_url, has_audio, is_url, probe_timing
from videocaption.graph.context import RUN_ID_OPTION

log = logging.getLogger("llm_caption")
MODULE_NAME = "llm_caption"
MODULE_ENTRY = "llm_caption.llm_caption"


def module_path() -> str:
    """The folder BMF loads ``llm_caption.py`` from: where it is installed (``pip install``
    ships it beside the package), or the checkout it is imported from.

    Raises:
        ModelLoadError: the module file is not importable (a broken installation).
    """
    spec = importlib.util.find_spec(MODULE_NAME)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the BMF module file {MODULE_NAME}.py cannot be found: install the project "
                             "(pip install .) or run from its checkout")
    return str(Path(spec.origin).parent)


def module_options(options: CaptionOptions, run_id: str | None = None) -> dict[str, Any]:
    """The option dict the BMF module is given (every field, so nothing depends on defaults),
    with the id of the caller's :class:`~videocaption.graph.context.RunContext` when there is one."""
    values = dataclasses.asdict(options)
    if run_id is not None:
        values[RUN_ID_OPTION] = run_id
    return values


def decoder_options(video_path: str | os.PathLike, options: CaptionOptions | None = None) -> dict[str, Any]:
    """BMF decoder options: every frame upright (``autorotate``, BMF's default, named so it
    stays on: phone videos carry a display matrix), stamped with its own time; with
    ``options``, only the frames sampling needs decoded (:func:`decode_mode`), on the GPU
    when it can (:func:`videocaption.media.decoding.decode_settings`)."""
    settings = {"input_path": ffmpeg_url(video_path), "autorotate": 1}
    if options is not None:
        mode, timing = decode_mode(video_path, options)
        log.info("decoding: %s (decode_skip %s; %s)", mode, options.decode_skip, timing)
        settings.update(decode_settings(mode, options.hwaccel, options.fps, timing))
    return settings


def decode_mode(video_path: str | os.PathLike, options: CaptionOptions) -> tuple[str, StreamTiming]:
    """The decode mode ``options.decode_skip`` comes to for this input, and what it was chosen by.

    Only a local file is probed (a URL may be a live stream that a probe would wait on) and
    only a local file sampled uniformly may seek (adaptive sampling looks at every frame).

    Raises:
        InvalidOptionError: ``seek`` asked for where it cannot be done.
    """
    local = not is_url(video_path)
    timing = probe_timing(video_path) if local and options.decode_skip in ("auto", "seek") else StreamTiming()
    try:
        return choose_decode(options.decode_skip, options.fps, timing,
                             can_seek=local and options.sampling == "uniform"), timing
    except ValueError as error:
        raise InvalidOptionError(f"{video_path}: {error}") from None


def build_caption_graph(video_path: str | os.PathLike, options: CaptionOptions, run_id: str | None = None):
    """Build (but do not run) the graph; returns the graph and the module's caption stream.

    Args:
        run_id: a :func:`videocaption.graph.context.registered` id that the module finds its caller's
            stall watch and progress callback by.
    """
    import bmf

    graph = bmf.graph()
    settings = decoder_options(video_path, options)
    decoded = graph.decode(settings)
    video = decoded["video"]
    if options.sampling == "uniform":
        # Sampling happens in BMF's FFmpeg filter, before any frame reaches Python.
        video = video.ff_filter("select", select_expression(options.fps))
    # adaptive: the module sees every decoded frame, to find cuts between samples too; it
    # converts only the frames it sends.
    streams = [video]
    if options.transcribe and has_audio(video_path):  # as the VAD and the recogniser take it: 16 kHz mono float
        if "durations" in settings:  # a seeking decoder trims the audio to its spans too: read it whole
            decoded = graph.decode({"input_path": settings["input_path"], "skip_frame": AVDISCARD_ALL})
        streams.append(decoded["audio"].ff_filter("aresample", str(SAMPLE_RATE))
                       .ff_filter("aformat", sample_fmts="flt", channel_layouts="mono"))
    node = bmf.module(streams, MODULE_NAME, module_options(options, run_id),
                      module_path=module_path(), entry=MODULE_ENTRY)
    return graph, node
















