"""The segments table: one row per described batch, across one video or a whole library.

It is what search reads, and what a user queries with DuckDB, pandas or polars: a plain Parquet
file (pyarrow), string, float and int columns only. ``events`` (issue 23: a per-batch dict some
results carry) is kept as its JSON text, null when a batch has none, so the table's schema does
not depend on which results have them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from videocaption.errors import OutputError, VideoInputError
from videocaption.extras import require
from videocaption.outputs.files import NEW_FILE_MODE

SEGMENTS_NAME = "segments.parquet"


@dataclass(frozen=True)
class Segment:
    path: str  # the video: absolute path or URL (the result's input when it names one)
    key: str  # the library key (its output folder), or the result file for a single video
    batch_id: int
    start_time: float
    end_time: float
    description: str
    shot: int | None = None
    speech: str | None = None
    events: str | None = None  # the batch's events as JSON text, None when it has none
    title: str | None = None
    model: str | None = None

    def text(self) -> str:
        """Everything search ranks on: description, speech, title and the events' text."""
        return " ".join(part for part in (self.description, self.speech, self.title, events_text(self.events)) if part)


def events_text(events: str | None) -> str:
    """The words of an events JSON value (its strings, at any depth), for full-text search."""
    if not events:
        return ""
    try:
        value = json.loads(events)
    except ValueError:
        return events

    def strings(item: Any) -> Iterator[str]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, inner in item.items():
                yield str(key)
                yield from strings(inner)
        elif isinstance(item, list):
            for inner in item:
                yield from strings(inner)

    return " ".join(strings(value))


def segments_from_result(document: dict[str, Any], *, path: str, key: str) -> list[Segment]:
    """The rows of one result.json document (batches that failed, with no description, left out)."""
    rows = []
    for batch in document.get("batches") or []:
        if batch.get("error") is not None or not isinstance(batch.get("batch_id"), int):
            continue
        events = batch.get("events")
        rows.append(
            Segment(
                path=path,
                key=key,
                batch_id=batch["batch_id"],
                start_time=float(batch.get("start_time") or 0.0),
                end_time=float(batch.get("end_time") or 0.0),
                description=str(batch.get("description") or ""),
                shot=batch.get("shot"),
                speech=batch.get("speech"),
                events=None if events in (None, {}, []) else json.dumps(events, ensure_ascii=False, sort_keys=True),
                title=document.get("video_title") or None,
                model=document.get("model") or None,
            )
        )
    return rows


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result.json document.

    Raises:
        VideoInputError: it cannot be read or is not a result (one line naming it).
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise VideoInputError(f"{path}: cannot be read as a result.json ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("batches"), list):
        raise VideoInputError(f"{path}: not a result.json (no 'batches' list)")
    return document


def parquet_schema():
    pa = require("pyarrow", "the segments table")

    types = {"str": pa.string(), "float": pa.float64(), "int": pa.int64()}
    required = {"path", "key", "batch_id", "start_time", "end_time", "description"}
    return pa.schema(
        [
            pa.field(field.name, types[str(field.type).split()[0]], nullable=field.name not in required)
            for field in fields(Segment)
        ]
    )


def write_segments(rows: Iterable[Segment], path: str | os.PathLike) -> Path:
    """Write the table as Parquet, atomically (a temporary file renamed into place).

    Raises:
        OutputError: it cannot be written (one line naming the path).
    """
    pa = require("pyarrow", "the segments table")
    pq = require("pyarrow.parquet", "the segments table")

    path = Path(path)
    table = pa.Table.from_pylist([asdict(row) for row in rows], schema=parquet_schema())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"{path}: cannot write the segments table ({error.strerror or error})") from None
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"{path}: cannot write the segments table ({error.strerror or error})") from None
        raise
    return path


def read_segments(path: str | os.PathLike) -> list[Segment]:
    """The rows of a segments Parquet file.

    Raises:
        VideoInputError: it cannot be read, or lacks the table's columns.
    """
    pq = require("pyarrow.parquet", "the segments table")

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:
        raise VideoInputError(f"{path}: cannot be read as Parquet ({error})") from None
    names = {field.name for field in fields(Segment)}
    missing = {"path", "batch_id", "start_time", "end_time", "description"} - set(table.column_names)
    if missing:
        raise VideoInputError(f"{path}: not a segments table (no {', '.join(sorted(missing))} column)")
    return [
        Segment(**{name: value for name, value in row.items() if name in names}, **_defaults(row))
        for row in table.to_pylist()
    ]


def _defaults(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row.get("path") or ""} if "key" not in row else {}
