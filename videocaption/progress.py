"""Progress reports from a running captioner to whoever shows them (the CLI's progress bar).

BMF builds the module instance itself, so a caller cannot hand it a callback; instead the
captioner reports to listeners registered here for the duration of a run.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Progress:
    frames_sampled: int  # frames kept for captioning so far
    batches_done: int  # batches described so far
    video_time: float  # seconds of video reached by the decoder
    stage: str  # "describing", "summarizing", "titling" or "done"


Listener = Callable[[Progress], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every progress report made while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def report(progress: Progress) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(progress)
