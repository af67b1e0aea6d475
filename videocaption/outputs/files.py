"""Writing files so that a reader never finds half of one: temporary names, then renames."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from videocaption.errors import OutputError


def _file_mode() -> int:
    """The mode ``open()`` would give a new file (0666 less the umask).

    mkstemp creates its file 0600; renamed into place as is, result.json would be readable by
    its owner only, unlike any other file the user writes.
    """
    umask = os.umask(0o022)  # reading the umask means setting it: done once, at import
    os.umask(umask)
    return 0o666 & ~umask


NEW_FILE_MODE = _file_mode()


def check_output_path(path: str | os.PathLike) -> None:
    """Refuse, before any work, a path that can never be written as a file.

    Raises:
        OutputError: ``path`` is a directory, or its nearest existing parent is not a
            writable directory.
    """
    text = os.fspath(path)
    path = Path(path)
    try:
        # "out/" names a folder even before it exists (Path drops the slash, and the run would
        # only fail when it writes, after all the work).
        if path.is_dir() or text.endswith((os.sep, "/")):
            raise OutputError(f"{path}: is a directory; give a file name")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise OutputError(f"{path}: cannot be written ({parent} is not a directory)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot be written (permission denied in {parent})")
    except OSError as error:  # a name too long, a loop of links, ...
        raise cannot_write(path, error) from None


def cannot_write(path: str | os.PathLike, error: OSError) -> OutputError:
    return OutputError(f"{path}: cannot be written ({error.strerror or error})")


def _write_temporary(path: Path, data: str | bytes) -> Path:
    """``data`` (text, or bytes such as a JPEG) in a new temporary file beside ``path``, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") if isinstance(data, bytes) else os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_files_atomic(texts: dict[Path, str | bytes]) -> None:
    """Write several files (text, or bytes) all together or not at all.

    Every file is first written whole to a temporary name beside it (where a full disk or a
    missing permission shows), and only then are all renamed into place; on any failure the
    temporary files are removed and the files that were there stay as they were.

    Raises:
        OutputError: naming the path that could not be written and why.
    """
    written: dict[Path, Path] = {}
    try:
        for path, text in texts.items():
            check_output_path(path)
            try:
                written[path] = _write_temporary(path, text)
            except OSError as error:
                raise cannot_write(path, error) from None
        for path, tmp in list(written.items()):
            try:
                os.replace(tmp, path)
            except OSError as error:
                raise cannot_write(path, error) from None
            del written[path]
    finally:
        for tmp in written.values():
            tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that the file is either the old one or the whole new one.

    Raises:
        OutputError: the file cannot be written (naming it and the cause).
    """
    write_files_atomic({Path(path): text})


def write_json_atomic(path: str | os.PathLike, document: Any) -> None:
    write_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
