"""The Ray actor that captions videos: one per worker process, the model loaded once.

This module does not import Ray: the runner wraps :class:`CaptionWorker` with ``ray.remote``,
so the class can be tested and read like any other. Each video goes through the same steps as
the single-video command line (one probe, then :func:`~videocaption.graph.runner.run_caption_graph`, which
writes result.json and the subtitles and returns the result), always with ``resume`` on: a
video retried after its worker died continues from the checkpoint the dead worker left.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from videocaption.errors import CaptionError
from videocaption.library.inputs import LibraryItem
from videocaption.library.manifest import FAILED, OK, ManifestRow
from videocaption.options import CaptionOptions
from videocaption.result import CaptionResult

log = logging.getLogger("llm_caption")
RESULT_NAME = "result.json"


def result_path(output_dir: str | os.PathLike, item: LibraryItem) -> Path:
    """Where a video's result.json goes: a folder per video, mirroring the input tree."""
    return Path(output_dir) / item.key / RESULT_NAME


def video_options(options: CaptionOptions, output_dir: str | os.PathLike, item: LibraryItem) -> CaptionOptions:
    """The options of one video: its own result path, subtitles and report beside it, resume on."""
    path = result_path(output_dir, item)
    return options.replace(
        result_path=str(path),
        srt_path=str(path.with_suffix(".srt")) if options.srt_path else None,
        vtt_path=str(path.with_suffix(".vtt")) if options.vtt_path else None,
        report_path=str(path.with_suffix(".html")) if options.report_path else None,
        resume=True,
    )


def row_from_result(item: LibraryItem, result: CaptionResult, **extra: Any) -> ManifestRow:
    """A video's manifest row from its result; ``failed`` when some batch was not described.

    The row is a view of the result.json document (:meth:`CaptionResult.to_dict`, its rounding
    included), so that it equals the row :func:`row_from_document` rebuilds from that file.
    """
    return row_from_document(item, result.to_dict(), **extra)


def row_from_document(item: LibraryItem, result: dict[str, Any], **extra: Any) -> ManifestRow:
    """A manifest row from a result.json document (a finished result found on disk)."""
    batches = result.get("batches", [])
    failed = [str(batch["batch_id"]) for batch in batches if "error" in batch]
    average = result.get("average_inference")
    usage = result.get("usage") or {}
    return ManifestRow(
        path=item.source,
        key=item.key,
        status=FAILED if failed else OK,
        error=(f"batches {', '.join(failed)} could not be described (see their 'error' fields)" if failed else None),
        frames_analysed=result.get("frames_analysed"),
        batches=len(batches),
        title=result.get("video_title"),
        summary=result.get("summary"),
        model=result.get("model"),
        turnaround_time=result.get("turnaround_time"),
        average_inference=average,
        model_seconds=round(average * len(batches), 4) if average is not None else None,
        prompt_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("generated_tokens"),
        **extra,
    )


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, CaptionError) else f"{type(error).__name__}: {text}"


class CaptionWorker:
    """Captions video after video in one process; the model stays loaded between them.

    Args:
        options: the run's options as a dict (``CaptionOptions`` fields).
        output_dir: the library's output folder, shared by every worker.
        cpus: the CPUs Ray gives this worker; torch uses as many threads.
        secrets: environment variables (the API key) set in this process only: they come as an
            argument, in memory, because Ray writes a ``runtime_env``'s variables to its logs.
    """

    def __init__(
        self, options: dict[str, Any], output_dir: str, cpus: float, secrets: dict[str, str] | None = None
    ) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        os.environ.update(secrets or {})
        self.options = CaptionOptions(**options)
        self.output_dir = output_dir
        self.load_error: str | None = None
        if self.options.backend != "openai":  # a server's client needs no torch threads
            import torch

            torch.set_num_threads(max(1, int(cpus)))
        try:
            from videocaption.backends import load_model

            load_model(self.options)  # cached per process: every graph of this worker reuses it
        except CaptionError as error:
            self.load_error = one_line(error)

    def ready(self) -> dict[str, Any]:
        """Where this worker runs, and why its model could not be loaded (None when it was)."""
        import sys

        torch = sys.modules.get("torch")
        return {
            "worker": self.name(),
            "pid": os.getpid(),
            "load_error": self.load_error,
            "torch_threads": torch.get_num_threads() if torch else None,
        }

    @staticmethod
    def name() -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def caption(self, source: str, key: str) -> dict[str, Any]:
        """Caption one video; a bad video is a ``failed`` row, never an exception.

        Returns:
            The manifest row as a dict.
        """
        from videocaption.graph.build import probe_input
        from videocaption.graph.runner import run_caption_graph

        item = LibraryItem(source, key)
        started, cpu_started = time.perf_counter(), time.process_time()
        host = {"host": socket.gethostname(), "worker": self.name()}
        duration = None
        try:
            options = video_options(self.options, self.output_dir, item)
            media = probe_input(source, options)  # the one probe: the row's duration, the run's decoding
            duration = media.duration if not item.is_url else None
            result = run_caption_graph(source, options, media=media, report_poster=True)  # poster: index.html
        except Exception as error:  # noqa: BLE001 - one bad video must not end the library
            log.warning("%s: %s", source, one_line(error))
            row = ManifestRow(
                path=source,
                key=key,
                status=FAILED,
                error=one_line(error),
                duration=duration,
                **self._times(started, cpu_started),
                **host,
            )
            return asdict(row)
        row = row_from_result(item, result, duration=duration, **self._times(started, cpu_started), **host)
        return asdict(row)

    @staticmethod
    def _times(started: float, cpu_started: float) -> dict[str, float]:
        return {
            "wall_seconds": round(time.perf_counter() - started, 4),
            "cpu_seconds": round(time.process_time() - cpu_started, 4),
        }
