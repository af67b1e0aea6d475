"""Noticing a run that stopped making progress (a decoder stuck on its input).

A decoder reading a pipe, a network share or a damaged file can block in a read that never
returns, or spin without producing a frame; BMF would then wait forever. The graph runner
registers an :class:`Activity` for the run; the BMF module (built by BMF, so it cannot be
handed an object) finds it by its result path and reports each call, and the runner gives up
when nothing happened for the stall time while the module was idle. Model work (loading,
describing, summarising) happens inside the module's calls, so a slow model is never a stall.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable, Iterator


class Activity:
    """When a run last made progress, and whether its module is busy right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._busy = 0
        self.abandoned = False  # set when the runner gave up: the module must then write nothing
        self._on_abandon: list[Callable[[], None]] = []

    def on_abandon(self, callback: Callable[[], None]) -> None:
        """Have :meth:`abandon` call ``callback`` (the module stops its model thread)."""
        with self._lock:
            self._on_abandon.append(callback)

    def abandon(self) -> None:
        """Give the run up: the module writes nothing more, and its model thread is stopped.

        A model thread left running when the interpreter exits is killed inside native code,
        which aborts the process ("terminate called without an active exception"); stopping
        it waits for the model call in progress.
        """
        with self._lock:
            self.abandoned = True
            callbacks, self._on_abandon = self._on_abandon, []
        for callback in callbacks:
            callback()

    def beat(self) -> None:
        """Record progress (a packet reached the module, a call finished)."""
        with self._lock:
            self._last = time.monotonic()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark the module as working for the block (never a stall, however long)."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._last = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the last progress; 0 while the module is busy."""
        with self._lock:
            return 0.0 if self._busy else time.monotonic() - self._last


_runs: dict[str, Activity] = {}
_runs_lock = threading.Lock()


def _key(result_path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(result_path))


@contextlib.contextmanager
def watching(result_path: str | os.PathLike) -> Iterator[Activity]:
    """Register the activity of the run that writes ``result_path`` for the block."""
    activity = Activity()
    key = _key(result_path)
    with _runs_lock:
        _runs[key] = activity
    try:
        yield activity
    finally:
        with _runs_lock:
            # An abandoned run stays registered, so a module that only starts after the runner
            # gave up (its decoder was blocked opening the input) still sees it must not write.
            if _runs.get(key) is activity and not activity.abandoned:
                del _runs[key]


def activity_for(result_path: str | os.PathLike) -> Activity:
    """The activity a runner watches for this result path, or an unwatched one (user graphs)."""
    with _runs_lock:
        return _runs.get(_key(result_path)) or Activity()
