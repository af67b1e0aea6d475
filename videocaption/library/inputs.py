"""What a library run captions: command-line inputs expanded into one ordered list of videos.

An input is a video file, a folder (walked recursively, into symlinked subfolders too) or
``@LIST``, a text file naming one path, folder or URL a line. Every video gets a ``key``, its
output folder, which depends on the video alone, never on the other inputs: so a library can
grow (an input added from elsewhere) without any finished video getting a new key, being
captioned again and leaving its old result orphaned.

* A local file's key is its absolute path without the leading ``/`` (the path as found: a
  video under a symlinked subfolder keeps the link's name). Two files never share one.
* A URL's key is ``_urls/HOST/PATH``, with the query (and fragment) kept, percent-encoded, in
  the last part: ``?id=1`` and ``?id=2`` are two videos and two folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from videocaption.errors import VideoInputError
from videocaption.media.probe import VIDEO_EXTENSIONS, is_url

URL_FOLDER = "_urls"  # outputs of URL inputs go under OUTPUT/_urls/HOST/PATH


@dataclass(frozen=True)
class LibraryItem:
    source: str  # absolute path, or the URL as given
    key: str  # the video's output folder (POSIX, relative): its absolute path, or _urls/HOST/PATH
    # Why the walk did not take this file as a video (a folder's file without a video
    # extension): it becomes a ``skipped`` row. None for videos.
    skip_reason: str | None = None

    @property
    def is_url(self) -> bool:
        return is_url(self.source)


def expand_inputs(inputs: Sequence[str], *, exclude: Sequence[Path] = ()) -> list[LibraryItem]:
    """Expand files, folders and ``@LIST`` files into the library, in a stable order.

    Folders are walked recursively in sorted order, following symlinked subfolders (each real
    folder once, so a link to an ancestor is no loop); hidden files and folders and anything
    under ``exclude`` (the output folder and the manifest, when they lie inside an input folder)
    are left out. A file named explicitly is always captioned; one found by the walk is captioned
    when its extension is a video's and listed as skipped otherwise. A video reached twice (a
    repeated input, a link) is taken once.

    Args:
        inputs: the command line's inputs.
        exclude: folders never walked into, and files never listed; ``exclude[0]`` is the output
            folder, which cannot be an input itself.

    Raises:
        VideoInputError: an input that does not exist, a list file that cannot be read, or the
            output folder given as an input.
    """
    excluded = [path.resolve() for path in exclude]
    items: dict[str, LibraryItem] = {}  # by the video's real path (or the URL): each video once
    for entry in _entries(inputs):
        if is_url(entry):
            items.setdefault(entry, LibraryItem(entry, url_key(entry)))
            continue
        path = Path(entry).expanduser().resolve()
        if path.is_dir():
            if excluded and path == excluded[0]:
                raise VideoInputError(
                    f"{entry}: is the output folder (--output); give the folders of the "
                    "videos, or another output folder"
                )
            for file, reason in _walk(path, excluded):
                items.setdefault(os.path.realpath(file), LibraryItem(str(file), local_key(file), reason))
        elif path.exists() or path.is_symlink():
            items.setdefault(str(path), LibraryItem(str(path), local_key(path)))
        else:
            raise VideoInputError(f"{entry}: no such file or folder")
    owners: dict[str, str] = {}
    for item in items.values():
        if owners.setdefault(item.key, item.source) != item.source:  # a/b and a//b, say
            raise VideoInputError(
                f"{item.source} and {owners[item.key]} would share the output folder {item.key}; give only one of them"
            )
    return list(items.values())


def _entries(inputs: Iterable[str]) -> Iterable[str]:
    """The inputs with every ``@LIST`` replaced by its lines (relative paths: from the list's folder)."""
    for entry in inputs:
        if not entry.startswith("@"):
            yield entry
            continue
        listing = Path(entry[1:]).expanduser()
        try:
            lines = listing.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is no path
        except (OSError, UnicodeDecodeError) as error:
            raise VideoInputError(f"{listing}: cannot read the list ({error.__class__.__name__}: {error})") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            yield line if is_url(line) or os.path.isabs(line) else str(listing.resolve().parent / line)


def _walk(folder: Path, excluded: list[Path]) -> Iterable[tuple[Path, str | None]]:
    seen = {os.path.realpath(folder)}  # real folders walked: a link back to one is not followed
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        here = Path(directory)
        kept = []
        for name in sorted(subfolders):
            real = os.path.realpath(here / name)
            if name.startswith(".") or Path(real) in excluded or real in seen:
                continue
            seen.add(real)
            kept.append(name)
        subfolders[:] = kept
        for name in sorted(files):
            if name.startswith(".") or Path(os.path.realpath(here / name)) in excluded:
                continue
            suffix = Path(name).suffix.lower()
            reason = None if suffix in VIDEO_EXTENSIONS else f"not a video file name ({suffix or 'no extension'})"
            yield here / name, reason


def local_key(path: Path) -> str:
    """``/data/videos/a.mp4`` -> ``data/videos/a.mp4``: the absolute path, so no other input changes it."""
    return path.absolute().as_posix().lstrip("/")


def url_key(url: str) -> str:
    """``http://host/v/clip.mp4?id=1`` -> ``_urls/host/v/clip.mp4?id=1``.

    The query and the fragment tell videos apart as much as the path does, so they stay, in the
    last part (with ``%`` and ``/`` in them percent-encoded); a ``?`` or ``#`` cannot appear in
    a URL's path as such, so no query-less URL gets the same key. ``.`` and ``..`` parts are
    encoded, so no key leaves the output folder.
    """
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment] or ["index"]
    segments = ["%2E" * len(segment) if segment in (".", "..") else segment for segment in segments]
    tail = ""
    if parts.query or url.split("#")[0].endswith("?"):
        tail += f"?{parts.query}"
    if parts.fragment:
        tail += f"#{parts.fragment}"
    segments[-1] += tail.replace("%", "%25").replace("/", "%2F")
    host = parts.netloc.rpartition("@")[2]  # never a user:password@ in a folder name
    return str(PurePosixPath(URL_FOLDER, host or parts.scheme, *segments))
