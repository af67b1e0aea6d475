"""Noticing a run that stopped making progress (a decoder stuck on its input).

A decoder reading a pipe, a network share or a damaged file can block in a read that never
returns, or spin without producing a frame; BMF would then wait forever. The graph runner
gives the run an :class:`Activity` (which reaches the module BMF builds through
:mod:`videocaption.graph.context`); the module marks each of its calls busy, and the runner gives up
when nothing happened for the stall time while the module was idle. Model work (loading,
describing, summarising) happens inside the module's calls, so a slow model is never a stall.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Activity:
    """When a run last made progress, and whether its module is busy right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._busy = 0
        self._write_lock = threading.Lock()
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

    def stop_writes(self) -> None:
        """The caller stopped the run (a signal): from now on the module writes no result.

        Unlike :meth:`abandon` this returns at once (it does not wait for the model), and once
        it returned no result write is under way (see :meth:`writing`).
        """
        with self._write_lock:
            self.abandoned = True

    @contextlib.contextmanager
    def writing(self) -> Iterator[bool]:
        """Hold off :meth:`stop_writes` for the block; yields whether the result may be written."""
        with self._write_lock:
            yield not self.abandoned

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
