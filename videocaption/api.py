"""The Python API: ``caption_video(path, ...)`` runs the caption graph and returns the result.

Like whisper's ``transcribe()``: it returns a :class:`~videocaption.result.CaptionResult` and
writes nothing unless asked. BMF, torch and the model are imported when it is first called, so
``import videocaption`` stays quick.
"""

from __future__ import annotations

import os
from typing import Any

from videocaption.captioning.progress import ProgressCallback
from videocaption.errors import InvalidOptionError
from videocaption.media.probe import MediaInfo, is_live_url
from videocaption.options import CaptionOptions, check_option_names
from videocaption.result import CaptionResult


def caption_video(
    video: str | os.PathLike,
    *,
    options: CaptionOptions | None = None,
    media: MediaInfo | None = None,
    on_progress: ProgressCallback | None = None,
    **overrides: Any,
) -> CaptionResult:
    """Caption one video through the BMF graph and return its result.

    Example::

        from videocaption import caption_video

        result = caption_video("in.mp4", model="deepseek-ai/deepseek-vl2-tiny", batch_size=4)
        print(result.video_title, result.summary)
        for batch in result.batches:
            print(batch.start_time, batch.end_time, batch.description)

    Files are written only when the options name them: ``result_path`` (the result.json
    document, :meth:`CaptionResult.to_dict`), ``srt_path``, ``vtt_path``; all together, once
    the result is ready. With a ``result_path`` the run also keeps a checkpoint beside it
    (``RESULT.partial``) while it runs, which ``resume=True`` continues from; without one,
    nothing is kept and an interrupted run starts over.

    Args:
        video: a local video file, or a URL FFmpeg reads (``http(s)://``, ...). Live streams
            are captioned by live mode (the CLI's ``--live``), not here.
        options: all options at once; by default :class:`CaptionOptions`' defaults.
        media: the input's probe (:func:`videocaption.media.probe.probe_media`), when the
            caller has made it already; made here otherwise (one probe per input).
        on_progress: called with each :class:`~videocaption.captioning.progress.Progress`
            report of the run (from BMF's thread), e.g. to draw a progress bar.
        **overrides: :class:`CaptionOptions` fields by name, applied over ``options``
            (``batch_size=4``, ``model=...``, ``result_path="result.json"``).

    Returns:
        The batch descriptions, summary, title, token usage and (with ``transcribe``) the
        transcript; ``result.complete`` is False when some batch could not be described.

    Raises:
        InvalidOptionError: an unknown keyword, a bad value, or a live input.
        VideoInputError: the input is missing, unreadable or not a video, or decoding stalled.
        OutputError: an output file cannot be written, or is the input itself.
        ModelLoadError: the model cannot be found or loaded.
        BackendError: a model server failed (after retries).
        CaptionError: the base class of all of these (a bad input or configuration, not a bug).
    """
    check_option_names(overrides)
    options = options if options is not None else CaptionOptions()
    if overrides:
        options = options.replace(**overrides)
    if options.live or is_live_url(video):
        raise InvalidOptionError(
            f"{video}: caption_video captions a whole video; a live stream is captioned by "
            "live mode (the command line's --live)"
        )
    from videocaption.graph.runner import run_caption_graph  # BMF and the model are imported only now

    return run_caption_graph(video, options, media=media, on_progress=on_progress)
