"""Writers for a :class:`CaptionResult`: result.json, SRT and WebVTT subtitles.

Every writer replaces its file atomically (a temporary file in the same directory, then
``os.replace``), so a reader never sees a half-written file and a crash leaves the previous
file, or none, behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from videocaption.options import CaptionOptions
from videocaption.outputs.files import cannot_write, check_output_path, write_atomic, write_files_atomic
from videocaption.outputs.report import Thumbnails, prune_thumbnails, report_files
from videocaption.result import BatchCaption, CaptionResult


class ResultWriter:
    """Base writer: subclasses set ``extension`` and implement ``write_result``."""

    extension: str

    def write_result(self, result: CaptionResult, file: TextIO) -> None:
        raise NotImplementedError

    def render(self, result: CaptionResult) -> str:
        buffer = io.StringIO()
        self.write_result(result, buffer)
        return buffer.getvalue()

    def __call__(self, result: CaptionResult, path: str | os.PathLike) -> Path:
        write_atomic(path, self.render(result))
        return Path(path)


class WriteJSON(ResultWriter):
    extension = "json"

    def write_result(self, result: CaptionResult, file: TextIO) -> None:
        json.dump(result.to_dict(), file, indent=2, ensure_ascii=False)
        file.write("\n")


def format_timestamp(seconds: float, *, always_include_hours: bool, decimal_marker: str) -> str:
    """``3725.5`` -> ``01:02:05,500`` (SRT) or ``01:02:05.500`` (VTT)."""
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def cue_spans(result: CaptionResult) -> list[tuple[float, float, BatchCaption]]:
    """One cue per batch: from its first frame until the next batch starts.

    A batch's last frame stands for the sampling interval after it, so the last cue ends one
    interval after the last frame, but never after the end of the video stream when the result
    knows it (``video_end``); cues never overlap and never have zero length.
    """
    interval = 1.0 / result.fps if result.fps > 0 else 1.0
    spans = []
    for index, batch in enumerate(result.batches):
        if index + 1 < len(result.batches):
            end = result.batches[index + 1].start_time
        else:
            end = batch.end_time + interval
            if result.video_end is not None:
                end = min(end, result.video_end)
        spans.append((batch.start_time, max(end, batch.start_time + 0.001), batch))
    return spans


def subtitle_cues(result: CaptionResult, subtitles: str = "captions") -> list[tuple[float, float, str]]:
    """The cues ``(start, end, text)`` in time order: a caption per batch (see :func:`cue_spans`),
    a speech cue per transcript segment (``subtitles`` "speech"), or both interleaved."""
    cues = []
    if subtitles in ("captions", "both"):
        cues += [(start, end, _caption_text(batch)) for start, end, batch in cue_spans(result)]
    if subtitles in ("speech", "both"):
        cues += [(seg["start"], max(seg["end"], seg["start"] + 0.001), seg["text"]) for seg in result.transcript or []]
    return sorted(cues, key=lambda cue: cue[0])


def _caption_text(batch: BatchCaption) -> str:
    return batch.description if batch.error is None else f"[not described: {batch.error}]"


class SubtitlesWriter(ResultWriter):
    always_include_hours: bool
    decimal_marker: str

    def __init__(self, subtitles: str = "captions") -> None:
        self.subtitles = subtitles  # captions, speech or both (see subtitle_cues)

    def timestamp(self, seconds: float) -> str:
        return format_timestamp(
            seconds, always_include_hours=self.always_include_hours, decimal_marker=self.decimal_marker
        )

    def cue_text(self, text: str) -> str:
        # A blank line would end the cue early in both formats, and an arrow starts a new cue.
        text = text.replace("-->", "->")
        return "\n".join(line for line in text.splitlines() if line.strip()) or "..."


class WriteSRT(SubtitlesWriter):
    extension = "srt"
    always_include_hours = True
    decimal_marker = ","

    def write_result(self, result: CaptionResult, file: TextIO) -> None:
        for number, (start, end, text) in enumerate(subtitle_cues(result, self.subtitles), start=1):
            file.write(f"{number}\n{self.timestamp(start)} --> {self.timestamp(end)}\n")
            file.write(f"{self.cue_text(text)}\n\n")


class WriteVTT(SubtitlesWriter):
    extension = "vtt"
    always_include_hours = False
    decimal_marker = "."

    def write_result(self, result: CaptionResult, file: TextIO) -> None:
        file.write("WEBVTT\n\n")
        for start, end, text in subtitle_cues(result, self.subtitles):
            file.write(f"{self.timestamp(start)} --> {self.timestamp(end)}\n{self.cue_text(text)}\n\n")


def output_paths(options: CaptionOptions) -> list[str]:
    """Every file a finished run writes: result_path, and srt_path / vtt_path / report_path if set."""
    return [path for path in (options.result_path, options.srt_path, options.vtt_path, options.report_path) if path]


def output_files(
    result: CaptionResult,
    options: CaptionOptions,
    *,
    thumbnails: Thumbnails | None = None,
    video_name: str = "",
    partial: bool = False,
    result_file: bool = True,
    poster: bool = False,
) -> dict[Path, str | bytes]:
    """The content of every file the options ask for, for :func:`write_files_atomic`.

    Args:
        thumbnails: the frames the run collected for the report (none: cards without pictures).
        video_name: the input, as the report names it.
        partial: the run is not over (a live run rewriting its outputs as batches arrive): the
            report says so, and result.json (``result_file=False``) is left for the end.
        poster: also the library index's picture of the video (library mode).
    """
    files: dict[Path, str | bytes] = {}
    if result_file and options.result_path:
        files[Path(options.result_path)] = WriteJSON().render(result)
    for writer, path in (
        (WriteSRT(options.subtitles), options.srt_path),
        (WriteVTT(options.subtitles), options.vtt_path),
    ):
        if path:
            files[Path(path)] = writer.render(result)
    if options.report_path:
        files.update(
            report_files(
                result,
                thumbnails if thumbnails is not None else Thumbnails(),
                options.report_path,
                video_name=video_name or Path(options.report_path).stem,
                video_duration=options.video_end,
                images=options.report_images,
                partial=partial,
                poster=poster,
            )
        )
    return files


def write_outputs(result: CaptionResult, options: CaptionOptions, **files: Any) -> list[Path]:
    """Write every file the options ask for, all together or none (see :func:`write_files_atomic`).

    Args:
        files: as :func:`output_files`.

    Raises:
        OutputError: a file could not be written; none of them was then replaced.
    """
    contents = output_files(result, options, **files)
    write_files_atomic(contents)
    if options.report_path and options.report_images == "folder":
        prune_thumbnails(options.report_path, contents[Path(options.report_path)])
    return list(contents)


class JsonlWriter:
    """Appends records, one JSON object a line, each written and flushed at once (live runs).

    The file only ever holds whole lines, so a reader following it (``tail -f``) never sees
    half a record and a restarted run never appends onto a torn one:

    - each record is written as one line with unbuffered writes; a write that fails part way
      (a full disk) is undone by truncating the file back to where the line began;
    - on opening, a torn last line (left by a run that was killed mid-write) is cut off.

    The file is opened for appending: a restarted run continues the same log.

    Args:
        target: a path, ``"-"`` for standard output, or an open text handle (tests pass ``io.StringIO``).

    Raises:
        OutputError: the file cannot be opened.
    """

    def __init__(self, target: str | os.PathLike | TextIO) -> None:
        self._fd: int | None = None
        self._file: TextIO | None = None
        self.name = "standard output"
        if hasattr(target, "write"):
            self._file = target
            self.name = getattr(target, "name", "the JSONL output")
        elif os.fspath(target) != "-":  # "-": sys.stdout as it is when writing (the CLI swaps it)
            check_output_path(target)
            self.name = os.fspath(target)
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
                cut_torn_line(self._fd)
            except OSError as error:
                if self._fd is not None:
                    os.close(self._fd)
                raise cannot_write(target, error) from None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record, whole or not at all.

        Raises:
            OutputError: it could not be written (a full disk, a closed pipe); the file is as it
                was before. ``__cause__`` is the ``OSError`` (``BrokenPipeError`` for a closed pipe).
        """
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            if self._fd is not None:
                write_line(self._fd, line.encode("utf-8"))
                return
            file = self._file if self._file is not None else sys.stdout
            file.write(line)
            file.flush()
        except OSError as error:
            raise cannot_write(self.name, error) from error

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cut_torn_line(fd: int) -> None:
    """Cut a last line without its newline off the file open on ``fd`` (a killed run's torn record)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:  # back to the newline before the torn line, a block at a time
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def write_line(fd: int, data: bytes) -> None:
    """Append ``data`` to the file open (``O_APPEND``) on ``fd``; on failure the file is cut back to
    its size before, so no part of the line stays."""
    before = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, before)
        raise
