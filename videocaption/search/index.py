"""Full-text search over segments: SQLite FTS5, ranked by BM25.

Why SQLite FTS5 and not DuckDB's ``fts`` extension: FTS5 is compiled into the Python standard
library's SQLite, so search works offline with nothing to install; DuckDB loads ``fts`` as an
extension downloaded at first use, which a machine without internet cannot do. Both rank with
BM25 (Okapi, k1 = 1.2, b = 0.75 in FTS5).

The index is a SQLite file cached beside what it was built from (``.NAME.search.sqlite``, or
``.search.sqlite`` in a folder) and rebuilt when the sources change (their paths, sizes and
modification times are its signature); where that place cannot be written it is built in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from videocaption.errors import VideoInputError
from videocaption.extras import require
from videocaption.search.segments import (
    SEGMENTS_NAME,
    Segment,
    events_text,
    read_result,
    read_segments,
    segments_from_result,
)

log = logging.getLogger("llm_caption")
SCHEMA_VERSION = "1"
RESULT_NAME = "result.json"
MANIFEST_NAME = "manifest.parquet"  # library mode's default (library/command.py)
# Column weights of BM25: a word in the title (shared by every segment of a video) counts less.
WEIGHTS = {"description": 1.0, "speech": 1.0, "title": 0.5, "events": 1.0}
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hit:
    """One moment found: its segment, its rank (1 = best), its score (higher is better) and a snippet."""

    rank: int
    score: float
    segment: Segment
    snippet: str

    def to_dict(self) -> dict:
        segment = self.segment
        return {
            "rank": self.rank,
            "score": round(self.score, 4),
            "video": segment.path,
            "key": segment.key,
            "batch_id": segment.batch_id,
            "start": segment.start_time,
            "end": segment.end_time,
            "snippet": self.snippet,
            "description": segment.description,
            "speech": segment.speech,
        }


def source_files(index: str | os.PathLike) -> tuple[str, list[Path]]:
    """What an ``--index`` PATH is (``segments``, ``manifest``, ``result`` or ``folder``) and the files it reads.

    Raises:
        VideoInputError: it does not exist, or holds no result.
    """
    path = Path(index)
    if path.is_dir():
        if (path / SEGMENTS_NAME).is_file():
            return "segments", [path / SEGMENTS_NAME]
        if (path / MANIFEST_NAME).is_file():
            return "manifest", [path / MANIFEST_NAME]
        results = sorted(p for p in path.rglob("*.json") if not p.name.startswith(".") and _is_result(p))
        if not results:
            raise VideoInputError(f"{path}: no {SEGMENTS_NAME} and no result.json files in this folder")
        return "folder", results
    if not path.is_file():
        raise VideoInputError(
            f"{path}: no such file or folder (give a segments or manifest Parquet, a result.json or a folder)"
        )
    if path.suffix == ".json":
        return "result", [path]
    if path.suffix == ".parquet":
        pq = require("pyarrow.parquet", "reading a Parquet table")

        try:
            columns = set(pq.read_schema(path).names)
        except (OSError, ValueError) as error:
            raise VideoInputError(f"{path}: cannot be read as Parquet ({error})") from None
        if "batch_id" in columns:
            return "segments", [path]
        if {"key", "status"} <= columns:
            beside = path.parent / SEGMENTS_NAME
            if beside.is_file():
                return "segments", [beside]
            return "manifest", [path]
        raise VideoInputError(f"{path}: neither a segments table nor a library manifest")
    raise VideoInputError(f"{path}: give a .parquet (segments or manifest), a result.json or a folder")


def _is_result(path: Path) -> bool:
    """A result.json (not a checkpoint, a manifest journal or a report's side file), by a quick look."""
    try:
        with open(path, encoding="utf-8") as file:
            head = file.read(4096)
    except OSError:
        return False
    return '"batches"' in head or '"video_title"' in head


def load_segments(index: str | os.PathLike) -> list[Segment]:
    """Every segment the ``--index`` PATH holds."""
    kind, files = source_files(index)
    if kind == "segments":
        return read_segments(files[0])
    if kind == "manifest":
        return _manifest_segments(files[0])
    rows: list[Segment] = []
    for file in files:
        document = read_result(file) if kind == "result" else _try_result(file)
        if document is not None:
            video = str(document.get("input") or document.get("video") or file)
            rows.extend(segments_from_result(document, path=video, key=str(file)))
    return rows


def _try_result(file: Path) -> dict | None:
    try:
        return read_result(file)
    except VideoInputError:
        return None


def _manifest_segments(manifest: Path) -> list[Segment]:
    """The segments of a manifest's ``ok`` rows, from the result.json in each row's folder."""
    pq = require("pyarrow.parquet", "reading a library manifest")

    rows: list[Segment] = []
    for row in pq.read_table(manifest).to_pylist():
        if row.get("status") != "ok":
            continue
        document = _try_result(manifest.parent / row["key"] / RESULT_NAME)
        if document is not None:
            rows.extend(segments_from_result(document, path=row["path"], key=row["key"]))
    return rows


def signature(index: str | os.PathLike) -> str:
    """Changes whenever a source file of the index changes (path, size, modification time)."""
    _, files = source_files(index)
    digest = hashlib.sha256(SCHEMA_VERSION.encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(index: str | os.PathLike, suffix: str = "search.sqlite") -> Path:
    """Where an index's cache lives: ``.NAME.SUFFIX`` beside a file, ``.SUFFIX`` inside a folder."""
    path = Path(index)
    return path / f".{suffix}" if path.is_dir() else path.with_name(f".{path.name}.{suffix}")


class SearchIndex:
    """BM25 full-text search over the segments of an ``--index`` PATH.

    Args:
        index: a segments or manifest Parquet file, a result.json, or a folder of results.
        cache: keep the built index beside ``index`` and reuse it while the sources are unchanged.
    """

    def __init__(self, index: str | os.PathLike, *, cache: bool = True) -> None:
        self.index = Path(index)
        self.signature = signature(index)
        self.built = False  # True when this instance (re)built the index rather than reusing it
        self.db = self._open(cache_path(index) if cache else None)

    def _open(self, cached: Path | None) -> sqlite3.Connection:
        if cached is not None and cached.is_file():
            try:
                db = sqlite3.connect(cached)
                found = db.execute("SELECT value FROM meta WHERE name = 'signature'").fetchone()
                if found and found[0] == self.signature:
                    return db
                db.close()
            except sqlite3.DatabaseError:
                pass
        segments = load_segments(self.index)
        self.built = True
        if cached is not None:
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            try:
                tmp.unlink(missing_ok=True)
                db = sqlite3.connect(tmp)
                build(db, segments, self.signature)
                db.close()
                os.replace(tmp, cached)
                return sqlite3.connect(cached)
            except (OSError, sqlite3.Error) as error:
                tmp.unlink(missing_ok=True)
                log.info("the search index cannot be cached at %s (%s); building it in memory", cached, error)
        db = sqlite3.connect(":memory:")
        build(db, segments, self.signature)
        return db

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM segments").fetchone()[0]

    def segments(self) -> list[Segment]:
        """Every segment, in index order (the ids search hands out are positions here, from 1)."""
        names = [field.name for field in fields(Segment)]
        cursor = self.db.execute(f"SELECT {', '.join(names)} FROM segments ORDER BY rowid")
        return [Segment(*row) for row in cursor]

    def search(self, query: str, top: int = 10) -> list[Hit]:
        """The ``top`` best segments for ``query`` by BM25 (any of its words; all of them rank higher)."""
        ranked = self.rank(query, top)
        if not ranked:
            return []
        return [
            Hit(rank, score, self.segment(rowid), snippet) for rank, (rowid, score, snippet) in enumerate(ranked, 1)
        ]

    def rank(self, query: str, top: int) -> list[tuple[int, float, str]]:
        """``(rowid, score, snippet)`` of the best ``top`` segments, best first."""
        match = fts_query(query)
        if not match:
            return []
        weights = ", ".join(str(weight) for weight in WEIGHTS.values())
        cursor = self.db.execute(
            f"SELECT rowid, -bm25(segments_fts, {weights}) AS score, "
            "snippet(segments_fts, -1, '[', ']', '...', 16) FROM segments_fts "
            "WHERE segments_fts MATCH ? ORDER BY bm25(segments_fts, " + weights + ") LIMIT ?",
            (match, top),
        )
        return [(rowid, score, snippet) for rowid, score, snippet in cursor]

    def segment(self, rowid: int) -> Segment:
        names = [field.name for field in fields(Segment)]
        row = self.db.execute(f"SELECT {', '.join(names)} FROM segments WHERE rowid = ?", (rowid,)).fetchone()
        return Segment(*row)

    def close(self) -> None:
        self.db.close()


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query: each word quoted (no operator can be injected), joined by OR."""
    words = _WORD.findall(text.lower())
    return " OR ".join(f'"{word}"' for word in dict.fromkeys(words))


def build(db: sqlite3.Connection, segments: Sequence[Segment], sig: str) -> None:
    """Fill an empty database with the segments and their FTS5 index."""
    names = [field.name for field in fields(Segment)]
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    db.execute(f"CREATE TABLE segments ({', '.join(names)})")
    db.execute(
        "CREATE VIRTUAL TABLE segments_fts USING fts5(description, speech, title, events, "
        "tokenize = 'porter unicode61')"
    )
    db.executemany(
        f"INSERT INTO segments (rowid, {', '.join(names)}) VALUES (?, {', '.join('?' * len(names))})",
        ((rowid, *asdict(segment).values()) for rowid, segment in enumerate(segments, 1)),
    )
    db.executemany(
        "INSERT INTO segments_fts (rowid, description, speech, title, events) VALUES (?, ?, ?, ?, ?)",
        (
            (rowid, s.description, s.speech or "", s.title or "", events_text(s.events))
            for rowid, s in enumerate(segments, 1)
        ),
    )
    db.execute("INSERT INTO meta VALUES ('signature', ?), ('segments', ?)", (sig, json.dumps(len(segments))))
    db.commit()
