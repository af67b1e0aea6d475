"""The HTML report: one page per video a person opens to see what the captioner saw.

result.json is for programs; the report shows pictures first (as PySceneDetect's ``save-html``
scene table does): the title and summary on top, a timeline of the whole video (batches, shots,
near-duplicates adaptive sampling skipped, speech), then one card per batch with its frames'
thumbnails, its description, the speech heard, and what the model call cost.

Thumbnails cost no second decode: :class:`Thumbnails` is handed each sampled frame the
pipeline already holds and keeps only a small JPEG of it (about 5-10 KB), so a long video's
report is built while streaming and memory stays bounded.

Images are embedded in the HTML (base64 ``data:`` URLs) by default: the report is then one file
that can be mailed, attached to an issue or moved without breaking, and at the default 1 frame a
second a 10-minute video adds about 5 MB. ``images="folder"`` writes the JPEGs to a folder beside
the report instead (``result_files/``), which keeps the HTML small for hour-long videos.

The HTML is made by Jinja2 with autoescaping on: descriptions, speech and file names are model-
or user-controlled text, and render as text, never as markup.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from PIL import Image

from videocaption.options import REPORT_IMAGES
from videocaption.outputs.files import write_files_atomic
from videocaption.result import BatchCaption, CaptionResult

ImagesMode = Literal["embed", "folder"]
IMAGES_MODES: tuple[str, ...] = REPORT_IMAGES
DEFAULT_IMAGES: ImagesMode = "embed"  # one file to mail or attach; see the module docstring
THUMBNAIL_WIDTH = 160  # pixels; a card shows batch_size of them side by side
THUMBNAIL_QUALITY = 70  # JPEG quality: ~5-10 KB a frame, enough to recognise a scene
POSTER_NAME = "poster.jpg"  # in a report's asset folder: the library index's picture of the video
# Names of the thumbnails written to a report's folder: time in milliseconds, then a hash of the
# JPEG, so a file of that name always holds those bytes (rewriting a live report writes only new
# ones, and never changes a picture an older copy of the page shows).
_THUMBNAIL_FILE = re.compile(r"^t\d{9}-[0-9a-f]{12}\.jpg$")
_TIME_TOLERANCE = 1e-6  # seconds: frame times compared with a batch's start and end times
# Control characters a small model sometimes emits: shown as boxes, never meant (tabs and newlines stay).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Thumbnail:
    """One sampled frame, as a small JPEG."""

    timestamp: float  # seconds: the frame's time, as the batch times give it
    jpeg: bytes
    width: int
    height: int

    @property
    def file_name(self) -> str:
        digest = hashlib.sha1(self.jpeg).hexdigest()[:12]
        return f"t{round(self.timestamp * 1000):09d}-{digest}.jpg"

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


class Thumbnails:
    """Collects a small JPEG of every sampled frame while the video streams.

    Call :meth:`add` for each frame the pipeline keeps (before it is resized for the model).
    Only the JPEG bytes are kept, never the frame: 600 frames of 720p take about 5 MB, where the
    frames themselves would take 1.6 GB. A frame belongs to the batch whose time span holds its
    timestamp, so the caller needs no batch ids.

    Args:
        width: thumbnail width in pixels (the height keeps the aspect ratio).
        quality: JPEG quality, 1-95.
    """

    def __init__(self, width: int = THUMBNAIL_WIDTH, quality: int = THUMBNAIL_QUALITY) -> None:
        if width < 1 or not 1 <= quality <= 95:
            raise ValueError(f"thumbnail width must be >= 1 and quality 1-95, not {width} and {quality}")
        self.width = width
        self.quality = quality
        self._thumbnails: dict[int, Thumbnail] = {}  # by time in microseconds: a frame added twice counts once

    def add(self, timestamp: float, image: Image.Image) -> Thumbnail:
        """Keep a thumbnail of ``image``, the frame at ``timestamp`` seconds (``image`` is not changed)."""
        height = max(1, round(image.height * self.width / image.width))
        small = image.convert("RGB") if image.mode != "RGB" else image
        small = small.resize((self.width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=self.quality, optimize=True)
        thumbnail = Thumbnail(timestamp, buffer.getvalue(), self.width, height)
        self._thumbnails[round(timestamp * 1_000_000)] = thumbnail
        return thumbnail

    def __len__(self) -> int:
        return len(self._thumbnails)

    def __iter__(self):
        return iter(sorted(self._thumbnails.values(), key=lambda thumbnail: thumbnail.timestamp))

    @property
    def nbytes(self) -> int:
        """Bytes of JPEG held (what the report's memory grows by per frame)."""
        return sum(len(thumbnail.jpeg) for thumbnail in self._thumbnails.values())

    def between(self, start: float, end: float) -> list[Thumbnail]:
        """The thumbnails from ``start`` to ``end`` seconds, both included, in time order."""
        return [t for t in self if start - _TIME_TOLERANCE <= t.timestamp <= end + _TIME_TOLERANCE]

    def poster(self) -> Thumbnail | None:
        """The picture of the video in the library index: the middle frame (the first one is
        often a black or title frame); None before any frame."""
        ordered = list(self)
        return ordered[len(ordered) // 2] if ordered else None


# -- rendering ------------------------------------------------------------------------------------


def _printable(value: Any) -> Any:
    """What every ``{{ ... }}`` of the templates shows: strings without control characters."""
    return _CONTROL_CHARACTERS.sub("", value) if isinstance(value, str) else value


def _environment():
    import jinja2

    return jinja2.Environment(
        finalize=_printable,
        loader=jinja2.PackageLoader("videocaption.outputs", "templates"),
        autoescape=True,  # every model- or user-given string renders as text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def clock(seconds: float) -> str:
    """``75.5`` -> ``1:15.5``; ``3725`` -> ``1:02:05.0`` (a frame time shown on a card)."""
    tenths = max(0, round(seconds * 10))
    minutes, tenths = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    secs = f"{tenths // 10:02d}.{tenths % 10}"
    return f"{hours}:{minutes:02d}:{secs}" if hours else f"{minutes}:{secs}"


def _percent(seconds: float, duration: float) -> float:
    return round(min(max(seconds / duration, 0.0), 1.0) * 100, 4)


def video_span(result: CaptionResult, video_duration: float | None) -> float:
    """Seconds the timeline spans: the video's duration when known, else one sampling interval
    past the last frame."""
    interval = 1.0 / result.fps if result.fps > 0 else 1.0
    last_frame = max((batch.end_time for batch in result.batches), default=0.0)
    known = next((seconds for seconds in (video_duration, result.video_end) if seconds), None)
    return max(known, last_frame) if known is not None and known > 0 else last_frame + interval


def _segment(start: float, end: float, duration: float, **fields: Any) -> dict[str, Any]:
    """A timeline bar from ``start`` to ``end`` seconds, placed in % of the video's duration."""
    left = _percent(start, duration)
    return {"start": start, "end": end, "left": left, "width": round(_percent(end, duration) - left, 4), **fields}


def _batch_ends(result: CaptionResult, duration: float) -> list[float]:
    """Where each batch's bar ends: one sampling interval after its last frame, but never past
    the next batch's first frame or the end of the video."""
    interval = 1.0 / result.fps if result.fps > 0 else 1.0
    starts = [batch.start_time for batch in result.batches[1:]] + [duration]
    return [
        max(batch.start_time, min(batch.end_time + interval, next_start, duration))
        for batch, next_start in zip(result.batches, starts)
    ]


def _batch_at(result: CaptionResult, seconds: float) -> BatchCaption | None:
    """The batch whose span holds ``seconds`` (the last one starting before it)."""
    before = [batch for batch in result.batches if batch.start_time <= seconds + _TIME_TOLERANCE]
    return before[-1] if before else (result.batches[0] if result.batches else None)


def timeline(result: CaptionResult, duration: float) -> dict[str, list[dict[str, Any]]]:
    """The timeline's rows of bars: batches, shots (with the cuts between them), skipped
    near-duplicates, speech; each bar links to the card of its batch."""
    ends = _batch_ends(result, duration)
    batches = [
        _segment(batch.start_time, end, duration, batch_id=batch.batch_id, error=batch.error is not None)
        for batch, end in zip(result.batches, ends)
    ]
    shots: list[dict[str, Any]] = []
    for batch, end in zip(result.batches, ends):
        if batch.shot is None:
            continue
        if shots and shots[-1]["shot"] == batch.shot:
            shots[-1] = _segment(shots[-1]["start"], end, duration, shot=batch.shot, batch_id=shots[-1]["batch_id"])
        else:
            shots.append(_segment(batch.start_time, end, duration, shot=batch.shot, batch_id=batch.batch_id))
    cuts = [{"time": shot["start"], "left": shot["left"], "batch_id": shot["batch_id"]} for shot in shots[1:]]
    skipped = [
        _segment(batch.start_time, end, duration, batch_id=batch.batch_id, frames=batch.frames_skipped)
        for batch, end in zip(result.batches, ends)
        if batch.frames_skipped
    ]
    speech = []
    for segment in result.transcript or []:
        start, end = float(segment["start"]), float(segment["end"])
        owner = _batch_at(result, start)
        speech.append(
            _segment(
                start,
                max(start, min(end, duration)),
                duration,
                text=str(segment.get("text", "")),
                batch_id=owner.batch_id if owner else None,
            )
        )
    return {
        "batches": batches,
        "shots": shots,
        "cuts": cuts,
        "skipped": skipped,
        "speech": speech,
        "ticks": _ticks(duration),
    }


def _ticks(duration: float, count: int = 6) -> list[dict[str, Any]]:
    """Time labels under the timeline at round steps (1, 2, 5, 10, 15, 30 s, 1, 2, 5 min, ...)."""
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]
    step = next((s for s in steps if duration / s <= count), steps[-1] * math.ceil(duration / (steps[-1] * count)))
    return [
        {"left": _percent(t, duration), "label": clock(t).removesuffix(".0")} for t in range(0, int(duration) + 1, step)
    ]


def _events(batch: BatchCaption) -> list[str]:
    """A batch's events as lines of text, when the result has any (``events`` in its dict).

    ``events`` is the object of ``--events`` (docs/events.md): its timed ``actions`` become
    lines of their own, each other field one ``name: value`` line. A list of events (each a
    mapping with ``time`` or ``start``, or text) is shown one line each.
    """
    events = batch.to_dict().get("events") or []
    return _object_events(events) if isinstance(events, Mapping) else _events_list(events)


def _object_events(events: Mapping[str, Any]) -> list[str]:
    """The lines of an events object: timed actions first, then the other fields that have a value."""
    actions = events.get("actions")
    lines = _events_list(actions) if isinstance(actions, list) else []
    for key, value in events.items():
        if key == "actions" or value in (None, "", [], {}):
            continue
        if isinstance(value, list):
            value = ", ".join(json.dumps(item) if isinstance(item, dict | list) else str(item) for item in value)
        lines.append(f"{key}: {value}")
    return lines


def _events_list(events: list[Any]) -> list[str]:
    lines = []
    for event in events:
        if isinstance(event, Mapping):
            time = event.get("time", event.get("start"))
            rest = ", ".join(f"{key}: {value}" for key, value in event.items() if key not in ("time", "start"))
            lines.append(f"{clock(float(time))} {rest}" if isinstance(time, int | float) else rest)
        else:
            lines.append(str(event))
    return lines


def _usage(batch: BatchCaption) -> str | None:
    """``1799 prompt tokens (1684 image), 16 generated, 7.1 s`` where the backend counted them."""
    parts = []
    usage = batch.usage
    if usage is not None:
        images = f" ({usage.image_tokens} image)" if usage.image_tokens is not None else ""
        parts.append(f"{usage.prompt_tokens} prompt tokens{images}, {usage.generated_tokens} generated")
    if batch.inference_time:
        parts.append(f"{batch.inference_time:.2f} s")
    return ", ".join(parts) or None


def _image_source(thumbnail: Thumbnail, images: ImagesMode, asset_prefix: str) -> str:
    return thumbnail.data_url() if images == "embed" else quote(f"{asset_prefix}{thumbnail.file_name}")


def _cards(
    result: CaptionResult, thumbnails: Thumbnails, images: ImagesMode, asset_prefix: str
) -> list[dict[str, Any]]:
    cards = []
    for batch in result.batches:
        frames = [
            {
                "src": _image_source(t, images, asset_prefix),
                "time": clock(t.timestamp),
                "seconds": t.timestamp,
                "width": t.width,
                "height": t.height,
            }
            for t in thumbnails.between(batch.start_time, batch.end_time)
        ]
        cards.append(
            {
                "batch_id": batch.batch_id,
                "start": batch.start_time,
                "end": batch.end_time,
                "span": f"{clock(batch.start_time)} - {clock(batch.end_time)}",
                "frames": frames,
                "frame_count": batch.frames,
                "description": batch.description,
                "speech": batch.speech,
                "events": _events(batch),
                "usage": _usage(batch),
                "error": batch.error,
                "shot": batch.shot,
                "frames_skipped": batch.frames_skipped,
            }
        )
    return cards


def _summary_evidence(result: CaptionResult) -> list[dict[str, Any]]:
    """The summary's sentences with the batches they rest on, when the result has them
    (``summary_evidence``: ``[{"text": ..., "batches": [ids]}]``); else nothing."""
    evidence = result.to_dict().get("summary_evidence") or []
    known = {batch.batch_id for batch in result.batches}
    return [
        {"text": str(item.get("text", "")), "batches": [int(b) for b in item.get("batches", []) if int(b) in known]}
        for item in evidence
        if isinstance(item, Mapping)
    ]


def asset_folder(report_path: str | os.PathLike) -> Path:
    """Where ``images="folder"`` puts a report's JPEGs: ``result.html`` -> ``result_files/``."""
    path = Path(report_path)
    return path.with_name(f"{path.stem}_files")


def render_report(
    result: CaptionResult,
    thumbnails: Thumbnails,
    *,
    video_name: str,
    video_duration: float | None = None,
    images: ImagesMode = DEFAULT_IMAGES,
    asset_dir: str | os.PathLike | None = None,
    partial: bool = False,
) -> str:
    """The report page of one video, as HTML text.

    Args:
        result: what the run produced so far (a live run passes the batches described yet).
        thumbnails: the frames collected while the video streamed.
        video_name: the input's file name or URL, shown as text.
        video_duration: seconds of video, from the probe; without it the timeline ends one
            sampling interval after the last frame (or at ``result.video_end``).
        images: ``"embed"`` (base64 in the page) or ``"folder"`` (files in ``asset_dir``).
        asset_dir: with ``"folder"``, the images' folder as the page links it (relative to the
            report, e.g. ``result_files``).
        partial: the run is still going (live) or stopped early: the page says so.

    Raises:
        ValueError: an unknown ``images`` mode, or ``"folder"`` without ``asset_dir``.
    """
    if images not in IMAGES_MODES:
        raise ValueError(f"images must be one of {', '.join(IMAGES_MODES)}, not {images!r}")
    if images == "folder" and asset_dir is None:
        raise ValueError('images="folder" needs asset_dir')
    prefix = "" if asset_dir is None else Path(asset_dir).as_posix().rstrip("/") + "/"
    duration = video_span(result, video_duration)
    usage = result.usage
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            result=result,
            video_name=video_name,
            duration=duration,
            duration_label=clock(duration),
            evidence=_summary_evidence(result),
            timeline=timeline(result, duration),
            cards=_cards(result, thumbnails, images, prefix),
            usage=usage,
            partial=partial,
        )
    )


def report_files(
    result: CaptionResult,
    thumbnails: Thumbnails,
    report_path: str | os.PathLike,
    *,
    video_name: str,
    video_duration: float | None = None,
    images: ImagesMode = DEFAULT_IMAGES,
    partial: bool = False,
    poster: bool = False,
) -> dict[Path, str | bytes]:
    """Every file of a report, for :func:`write_files_atomic` (with the other outputs of a run).

    The thumbnails come first and the page last: a failure on the way leaves the old page,
    whose pictures are still there (a thumbnail's name is its content's hash, so no picture a
    page links to is ever replaced by another). Thumbnails already on disk are not written again.

    Args:
        report_path: the HTML file.
        poster: also write the library index's picture (:data:`POSTER_NAME` in the asset folder).
        The rest: as :func:`render_report`.
    """
    report_path = Path(report_path)
    folder = asset_folder(report_path)
    files: dict[Path, str | bytes] = {}
    if images == "folder":
        for thumbnail in thumbnails:
            if not (folder / thumbnail.file_name).is_file():
                files[folder / thumbnail.file_name] = thumbnail.jpeg
    picture = thumbnails.poster() if poster else None
    if picture is not None:
        files[folder / POSTER_NAME] = picture.jpeg
    files[report_path] = render_report(
        result,
        thumbnails,
        video_name=video_name,
        video_duration=video_duration,
        images=images,
        asset_dir=folder.name if images == "folder" else None,
        partial=partial,
    )
    return files


def write_report(
    result: CaptionResult,
    thumbnails: Thumbnails,
    report_path: str | os.PathLike,
    *,
    video_name: str,
    video_duration: float | None = None,
    images: ImagesMode = DEFAULT_IMAGES,
    partial: bool = False,
    poster: bool = False,
) -> Path:
    """Write the report (and its images with ``"folder"``) atomically; see :func:`report_files`.

    Raises:
        OutputError: a file could not be written; the report that was there is then unchanged.
    """
    files = report_files(
        result,
        thumbnails,
        report_path,
        video_name=video_name,
        video_duration=video_duration,
        images=images,
        partial=partial,
        poster=poster,
    )
    write_files_atomic(files)
    if images == "folder":
        prune_thumbnails(report_path, files[Path(report_path)])
    return Path(report_path)


def prune_thumbnails(report_path: str | os.PathLike, html: str) -> None:
    """Remove the thumbnails of the report's folder that ``html`` (the page now in place) does
    not show: those of an earlier run on a different input or with other times."""
    folder = asset_folder(report_path)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _THUMBNAIL_FILE.match(path.name) and quote(f"{folder.name}/{path.name}") not in html:
            path.unlink(missing_ok=True)


# -- the library index ----------------------------------------------------------------------------


INDEX_NAME = "index.html"


def render_library_index(
    rows: Iterable[Any], output_root: str | os.PathLike, *, report_name: str = "result.html"
) -> str:
    """The library's ``index.html``: one row per video, sortable by clicking a column's header.

    Args:
        rows: manifest rows (:class:`videocaption.library.manifest.ManifestRow` or anything with
            its ``key``, ``path``, ``status``, ``title``, ``duration``, ``error`` attributes).
        output_root: the library's output folder, where the index goes; a video's report is
            ``<output_root>/<key>/<report_name>`` and its poster ``<key>/<stem>_files/poster.jpg``
            (linked only when they exist).
    """
    root = Path(output_root)
    entries = []
    for row in rows:
        report = Path(row.key) / report_name
        poster = asset_folder(report) / POSTER_NAME
        entries.append(
            {
                "key": row.key,
                "path": row.path,
                "status": row.status,
                "title": row.title or "",
                "duration": row.duration,
                "duration_label": clock(row.duration) if row.duration is not None else "",
                "error": row.error,
                # Links are URLs: a "#" or "?" in a file name must not end the path.
                "report": quote(report.as_posix()) if (root / report).is_file() else None,
                "poster": quote(poster.as_posix()) if (root / poster).is_file() else None,
            }
        )
    entries.sort(key=lambda entry: entry["key"])
    return _environment().get_template("index.html.j2").render(entries=entries)


def write_library_index(
    rows: Iterable[Any], output_root: str | os.PathLike, *, report_name: str = "result.html"
) -> Path:
    """Write ``index.html`` at the output root, atomically.

    Raises:
        OutputError: the file could not be written.
    """
    path = Path(output_root) / INDEX_NAME
    write_files_atomic({path: render_library_index(rows, output_root, report_name=report_name)})
    return path
