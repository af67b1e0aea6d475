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
from videocaption.graph.context import RUN_ID_OPTION
from videocaption.media.decoding import AVDISCARD_ALL, choose_decode, decode_settings, reads_keyframes
from videocaption.media.probe import MediaInfo, ffmpeg_url, is_url, probe_media, probe_url_streams
from videocaption.options import CaptionOptions
from videocaption.sampling.grid import select_expression

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
        raise ModelLoadError(
            f"the BMF module file {MODULE_NAME}.py cannot be found: install the project "
            "(pip install .) or run from its checkout"
        )
    return str(Path(spec.origin).parent)


def module_options(options: CaptionOptions, run_id: str | None = None) -> dict[str, Any]:
    """The option dict the BMF module is given (every field, so nothing depends on defaults),
    with the id of the caller's :class:`~videocaption.graph.context.RunContext` when there is one."""
    values = dataclasses.asdict(options)
    if run_id is not None:
        values[RUN_ID_OPTION] = run_id
    return values


def probe_input(video_path: str | os.PathLike, options: CaptionOptions) -> MediaInfo:
    """The one probe of an input that a run with ``options`` needs.

    A local file is probed in full (:func:`~videocaption.media.probe.probe_media`; its keyframes
    only where the decode mode may seek). A URL is not probed (it may be a live stream, which a
    probe would wait on), except for its streams when transcribing: the graph asks for audio
    only where there is some.

    Raises:
        VideoInputError: a local file that is missing, unreadable or not a video.
    """
    if is_url(video_path):
        return probe_url_streams(os.fspath(video_path)) if options.transcribe else MediaInfo()
    return probe_media(video_path, keyframes=reads_keyframes(options.decode_skip, options.sampling))


def decoder_options(
    video_path: str | os.PathLike, options: CaptionOptions | None = None, media: MediaInfo | None = None
) -> dict[str, Any]:
    """BMF decoder options: every frame upright (``autorotate``, BMF's default, named so it
    stays on: phone videos carry a display matrix), stamped with its own time; with
    ``options``, only the frames sampling needs decoded (:func:`decode_mode`, by ``media``,
    probed here when not given), on the GPU when it can
    (:func:`videocaption.media.decoding.decode_settings`)."""
    settings = {"input_path": ffmpeg_url(video_path), "autorotate": 1}
    if options is not None:
        mode, media = decode_mode(video_path, options, media)
        log.info("decoding: %s (decode_skip %s; %s)", mode, options.decode_skip, media)
        settings.update(decode_settings(mode, options.hwaccel, options.fps, media))
    return settings


def decode_mode(
    video_path: str | os.PathLike, options: CaptionOptions, media: MediaInfo | None = None
) -> tuple[str, MediaInfo]:
    """The decode mode ``options.decode_skip`` comes to for this input, and what it was chosen by.

    Only a local file is probed (:func:`probe_input`, when ``media`` is not given) and only a
    local file sampled uniformly may seek (adaptive sampling looks at every frame).

    Raises:
        InvalidOptionError: ``seek`` asked for where it cannot be done.
        VideoInputError: from the probe.
    """
    local = not is_url(video_path)
    if media is None:
        media = probe_input(video_path, options)
    try:
        return choose_decode(
            options.decode_skip, options.fps, media, can_seek=local and options.sampling == "uniform"
        ), media
    except ValueError as error:
        raise InvalidOptionError(f"{video_path}: {error}") from None


def build_caption_graph(
    video_path: str | os.PathLike, options: CaptionOptions, run_id: str | None = None, media: MediaInfo | None = None
):
    """Build (but do not run) the graph; returns the graph and the module's caption stream.

    Args:
        run_id: a :func:`videocaption.graph.context.registered` id that the module finds its caller's
            options, stall watch, progress callback and result slot by.
        media: the input's probe (:func:`probe_input`), which decides the decode mode and
            whether audio is read; probed here when not given.
    """
    import bmf

    if media is None:
        media = probe_input(video_path, options)
    graph = bmf.graph()
    settings = decoder_options(video_path, options, media)
    decoded = graph.decode(settings)
    video = decoded["video"]
    if options.sampling == "uniform":
        # Sampling happens in BMF's FFmpeg filter, before any frame reaches Python.
        video = video.ff_filter("select", select_expression(options.fps))
    # adaptive: the module sees every decoded frame, to find cuts between samples too; it
    # converts only the frames it sends.
    streams = [video]
    if options.transcribe and media.has_audio:  # as the VAD and the recogniser take it: 16 kHz mono float
        if "durations" in settings:  # a seeking decoder trims the audio to its spans too: read it whole
            decoded = graph.decode({"input_path": settings["input_path"], "skip_frame": AVDISCARD_ALL})
        streams.append(
            decoded["audio"]
            .ff_filter("aresample", str(SAMPLE_RATE))
            .ff_filter("aformat", sample_fmts="flt", channel_layouts="mono")
        )
    node = bmf.module(
        streams, MODULE_NAME, module_options(options, run_id), module_path=module_path(), entry=MODULE_ENTRY
    )
    return graph, node
