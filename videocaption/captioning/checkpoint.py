"""Checkpoints that let an interrupted run continue where it stopped (``resume``).

After every described batch the captioner's progress is saved next to the result file
(``result.json`` -> ``result.json.partial``), atomically, with a fingerprint of everything
that decides the answers: the options that shape prompts and batches, and the first sampled
frame's pixels. A resumed run reuses the saved batches only when the fingerprint matches, skips
their frames without describing them, and so ends with the same result as a run that was never
interrupted (with greedy decoding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from videocaption.options import CaptionOptions, options_with_role
from videocaption.outputs.files import write_json_atomic
from videocaption.result import BatchCaption

log = logging.getLogger("llm_caption")

FORMAT_VERSION = 1


def checkpoint_path(result_path: str | os.PathLike) -> Path:
    return Path(f"{result_path}.partial")


def finished_result(result_path: str | os.PathLike) -> dict[str, Any] | None:
    """The result document at ``result_path`` if its run finished, else None.

    An interrupted run leaves its checkpoint beside the result (and older versions wrote a
    partial result marked ``complete: false``); either means the video is not done yet.
    """
    path = Path(result_path)
    if checkpoint_path(path).exists() or not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if result.get("complete", True) is not False else None


def fingerprint(options: CaptionOptions, first_frame: Image.Image) -> str:
    """A digest of the answer-shaping options (their ``fingerprint`` role) and the first sampled frame.

    The adaptive options decide which frames are sent too, but are left out of uniform runs'
    fingerprints, so that their checkpoints stay valid.
    """
    digest = hashlib.sha256()
    values = {name: getattr(options, name) for name in options_with_role("fingerprint")}
    values["fps"] = float(values["fps"])  # fps=1 and fps=1.0 are the same run
    if options.sampling != "uniform":
        values.update({name: getattr(options, name) for name in options_with_role("fingerprint", "adaptive")})
    digest.update(json.dumps(values, sort_keys=True).encode())
    digest.update(f"{first_frame.size}".encode())
    digest.update(first_frame.convert("RGB").tobytes())
    return digest.hexdigest()


class Checkpoint:
    """The sidecar file of one result path: the only code that reads or writes it.

    A run without a result path (``caption_video`` unless asked for a file) has no checkpoint:
    ``Checkpoint(None)`` keeps nothing and has nothing to resume from.
    """

    def __init__(self, result_path: str | os.PathLike | None) -> None:
        self.path = checkpoint_path(result_path) if result_path is not None else None

    def saved_batches(self) -> int:
        """How many described batches the file holds (0 when there is none or it is unreadable)."""
        if self.path is None:
            return 0
        try:
            batches = json.loads(self.path.read_text(encoding="utf-8")).get("batches")
        except (OSError, ValueError, AttributeError):
            return 0
        return len(batches) if isinstance(batches, list) else 0

    def load(self, expected_fingerprint: str) -> list[BatchCaption]:
        """Saved batches when the checkpoint belongs to this video and options, else []."""
        if self.path is None:
            return []
        try:
            saved: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable checkpoint %s: %s", self.path, error)
            return []
        if saved.get("version") != FORMAT_VERSION or saved.get("fingerprint") != expected_fingerprint:
            log.warning("checkpoint %s is for another video or other options; starting over", self.path)
            return []
        return [BatchCaption(**batch) for batch in saved.get("batches", [])]

    def save(self, fingerprint_: str, batches: list[BatchCaption]) -> None:
        """Replace the file atomically with ``batches``.

        Raises:
            OutputError: it cannot be written (a full disk, ...); the previous file stays.
        """
        if self.path is None:
            return
        document = {
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint_,
            "batches": [batch.__dict__ for batch in batches if batch.error is None],
        }
        write_json_atomic(self.path, document)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
