"""The library's manifest: one row per input, durable as soon as it is known.

Rows are appended to a JSON Lines file (``manifest.jsonl``) and fsynced one by one, so a driver
killed at any moment loses no finished row; at the end (and on Ctrl-C) the last row of every
input is written as Parquet, atomically (a temporary file renamed into place). A rerun reads the
JSON Lines file back to know what is already done.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from videocaption.errors import InvalidOptionError, OutputError
from videocaption.extras import require
from videocaption.outputs.files import NEW_FILE_MODE

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
# Columns that differ between two runs of the same library even when every caption is equal.
REQUIRED_COLUMNS = ("path", "key", "status")
TIMING_COLUMNS = ("wall_seconds", "cpu_seconds", "average_inference", "turnaround_time", "model_seconds")


@dataclass(frozen=True)
class ManifestRow:
    path: str  # the input: absolute path, or URL
    key: str  # its folder in the output folder (see library/inputs.py)
    status: str  # ok, failed or skipped
    error: str | None = None  # one line: why it failed or was skipped
    duration: float | None = None  # seconds of video, from the probe
    frames_analysed: int | None = None
    batches: int | None = None
    title: str | None = None
    summary: str | None = None
    model: str | None = None
    wall_seconds: float | None = None  # the worker's time on this video: probe, graph, writing
    # CPU time of the worker process (every thread: decoder, model, Python) on this video; what
    # sizing CPUs per GPU needs (docs/scaling.md), and unlike wall time not shared with other work.
    cpu_seconds: float | None = None
    turnaround_time: float | None = None  # result.json's: first frame to result
    average_inference: float | None = None  # result.json's: model seconds per batch
    model_seconds: float | None = None  # model time of the batch descriptions (summary not included)
    prompt_tokens: int | None = None  # result.json's usage total, when the backend reports it
    output_tokens: int | None = None  # tokens generated for the batch descriptions
    host: str | None = None  # the worker's host name (None for rows the driver wrote itself)
    worker: str | None = None  # host:pid of the worker process

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ManifestRow:
        names = {field.name for field in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})


def parquet_schema():
    pa = require("pyarrow", "the library manifest")

    # Annotations are strings here ("float | None"): the first word names the column's type.
    types = {"str": pa.string(), "float": pa.float64(), "int": pa.int64()}
    return pa.schema(
        [
            pa.field(field.name, types[str(field.type).split()[0]], nullable=field.name not in REQUIRED_COLUMNS)
            for field in fields(ManifestRow)
        ]
    )


class Manifest:
    """The JSON Lines journal and the Parquet file of one library run.

    Args:
        path: the Parquet file; the journal is the same path with ``.jsonl`` as its suffix.

    Raises:
        InvalidOptionError: ``path`` ends in ``.jsonl``: it would be its own journal, and every
            rerun would read the Parquet file as JSON Lines.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.journal = self.path.with_suffix(".jsonl")
        if self.journal == self.path:
            raise InvalidOptionError(
                f"--manifest {path}: the manifest is a Parquet file, and its journal is the "
                "same path with the suffix .jsonl; name it .parquet"
            )
        self._file = None

    def check_writable(self) -> None:
        """Fail before any video starts when the journal or the Parquet file cannot be written.

        Raises:
            OutputError: the path is a folder, its folder cannot be made, or a byte cannot be
                written there (read-only, a full disk); one line naming the path.
        """
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a folder; --manifest names the Parquet file to write")
        try:
            self._open()
            check_folder_writable(self.path.parent)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write the manifest there ({_reason(error)})") from None

    def previous_rows(self) -> dict[str, ManifestRow]:
        """The last row of every input an earlier run recorded (a torn last line is ignored)."""
        rows: dict[str, ManifestRow] = {}
        try:
            lines = self.journal.read_bytes().splitlines()
        except FileNotFoundError:
            return rows
        except OSError as error:
            raise OutputError(f"{self.journal}: cannot read the journal ({_reason(error)})") from None
        for line in lines:
            try:
                row = ManifestRow.from_dict(json.loads(line.decode("utf-8")))
            except (ValueError, TypeError):
                continue  # a line cut short by a killed driver (or bytes that are no JSON at all)
            rows[row.path] = row
        return rows

    def append(self, row: ManifestRow) -> None:
        """Add a row to the journal and make it durable before returning.

        Raises:
            OutputError: the row cannot be written (a full disk); the rows before it are kept.
        """
        try:
            self._open()
            self._file.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise OutputError(
                f"{self.journal}: cannot record {row.path} ({_reason(error)}); the rows before "
                "it are kept: rerun the same command to continue"
            ) from None

    def _open(self) -> None:
        if self._file is None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.journal, "a", encoding="utf-8")
            if self._file.tell() and not self._ends_with_newline():
                self._file.write("\n")  # after a torn line: start a fresh one

    def _ends_with_newline(self) -> bool:
        with open(self.journal, "rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"\n"

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # a full disk: what append fsynced is kept
                pass
            self._file = None

    def write_parquet(self, rows: Iterable[ManifestRow]) -> Path:
        """Write ``rows`` as the Parquet manifest, atomically.

        Raises:
            OutputError: it cannot be written (a full disk); the journal still holds every row.
        """
        pa = require("pyarrow", "the library manifest")
        pq = require("pyarrow.parquet", "the library manifest")

        table = pa.Table.from_pylist([asdict(row) for row in rows], schema=parquet_schema())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as error:
            raise OutputError(
                f"{self.path}: cannot write the manifest ({_reason(error)}); its rows are kept in {self.journal}"
            ) from None
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.chmod(tmp, NEW_FILE_MODE)  # mkstemp's 0600 would make it owner-only
            os.replace(tmp, self.path)
        except BaseException as error:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise OutputError(
                    f"{self.path}: cannot write the manifest ({_reason(error)}); its rows are kept in {self.journal}"
                ) from None
            raise
        return self.path


def check_folder_writable(folder: Path) -> None:
    """Make ``folder`` and write (and fsync) a byte there: read-only places and full disks fail now.

    Raises:
        OSError: they do.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as probe:
        probe.write(b"\n")
        probe.flush()
        os.fsync(probe.fileno())


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The Parquet manifest's rows as dicts (for tests and scripts)."""
    pq = require("pyarrow.parquet", "the library manifest")

    return pq.read_table(path).to_pylist()
