"""What a library run captions: command-line inputs expanded into one ordered list of videos.

An input is a video file, a folder (walked recursively) or ``@LIST``, a text file naming one
path, folder or URL a line. Every video gets a ``key``: its path relative to the common root of
the inputs, so the outputs mirror the input tree and two equal file names in two folders never
share an output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from videocaption.errors import VideoInputError
from videocaption.media.probe import VIDEO_EXTENSIONS, is_url
URL_FOLDER = "_urls"  # outputs of URL inputs go under OUTPUT/_urls/HOST/PATH


@dataclass(frozen=True)
class LibraryItem:
    source: str  # absolute path, or the URL as given
    key: str  # mirrored relative path (POSIX), unique in the library: the video's output folder
    # Why the walk did not take this file as a video (a folder's file without a video
    # extension): it becomes a ``skipped`` row. None for videos.
    skip_reason: str | None = None

    @property
    def is_url(self) -> bool:
        return is_url(self.source)


def expand_inputs(inputs: Sequence[str], *, exclude: Sequence[Path] = ()) -> list[LibraryItem]:
    """Expand files, folders and ``@LIST`` files into the library, in a stable order.

    Folders are walked recursively in sorted order; hidden files and folders and anything under
    ``exclude`` (the output folder and the manifest, when they lie inside an input folder) are
    left out. A file
    named explicitly is always captioned; one found by the walk is captioned when its extension
    is a video's and listed as skipped otherwise. Repeated inputs are taken once.

    Args:
        inputs: the command line's inputs.
        exclude: folders never walked into, and files never listed.

    Raises:
        VideoInputError: an input that does not exist, or a list file that cannot be read.
    """
    excluded = [path.resolve() for path in exclude]
    found: list[tuple[str, Path | None, str | None]] = []  # (source, walk root, skip reason)
    roots: list[Path] = []
    for entry in _entries(inputs):
        if is_url(entry):
            found.append((entry, None, None))
            continue
        path = Path(entry).expanduser().resolve()
        if path.is_dir():
            roots.append(path)
            found.extend((str(file), path, reason) for file, reason in _walk(path, excluded))
        elif path.exists() or path.is_symlink():
            roots.append(path.parent)
            found.append((str(path), None, None))
        else:
            raise VideoInputError(f"{entry}: no such file or folder")
    common = Path(os.path.commonpath(roots)) if roots else Path("/")
    items: dict[str, LibraryItem] = {}
    for source, _root, reason in found:
        if source not in items:
            items[source] = LibraryItem(source, _key(source, common), reason)
    return list(items.values())


def _entries(inputs: Iterable[str]) -> Iterable[str]:
    """The inputs with every ``@LIST`` replaced by its lines (relative paths: from the list's folder)."""
    for entry in inputs:
        if not entry.startswith("@"):
            yield entry
            continue
        listing = Path(entry[1:]).expanduser()
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise VideoInputError(f"{listing}: cannot read the list ({error.__class__.__name__}: {error})") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            yield line if is_url(line) or os.path.isabs(line) else str(listing.resolve().parent / line)


def _walk(folder: Path, excluded: list[Path]) -> Iterable[tuple[Path, str | None]]:
    for directory, subfolders, files in os.walk(folder):
        here = Path(directory)
        subfolders[:] = sorted(name for name in subfolders
                               if not name.startswith(".") and (here / name) not in excluded)
        for name in sorted(files):
            if name.startswith(".") or here / name in excluded:
                continue
            suffix = Path(name).suffix.lower()
            reason = None if suffix in VIDEO_EXTENSIONS else f"not a video file name ({suffix or 'no extension'})"
            yield here / name, reason


def _key(source: str, common: Path) -> str:
    if is_url(source):
        parts = urlsplit(source)
        path = PurePosixPath(parts.path.lstrip("/") or "index")
        return str(PurePosixPath(URL_FOLDER, parts.netloc or parts.scheme, path))
    return Path(source).relative_to(common).as_posix()
