"""How a caller and the module BMF builds for its run share objects: a run id in the options.

BMF constructs the ``llm_caption`` module itself from a dict of plain options, so the graph
runner cannot pass it a callback or an object, nor get one back. Instead it registers a
:class:`RunContext` (the options, the stall watch, the progress callback and a slot for the
result of this run) under a fresh id and passes only the id, as the module option ``run_id``;
the module looks the context up once, when it is built, and puts its finished
:class:`~videocaption.result.CaptionResult` there: the caller gets the result in memory and
never reads a file back. A user's graph passes no id and gets a context of its own that
nobody watches.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from videocaption.captioning.progress import Progress, ProgressCallback
from videocaption.graph.watchdog import Activity
from videocaption.options import CaptionOptions
from videocaption.result import CaptionResult

RUN_ID_OPTION = "run_id"


@dataclass
class RunContext:
    """What the caller of one run shares with its module."""

    activity: Activity = field(default_factory=Activity)  # stall watch; abandon() stops the module
    on_progress: ProgressCallback | None = None  # the progress bar, if any
    # The caller's options as they are, which the module takes instead of its option dict: a
    # dict cannot say "no result file" (there a missing result_path means result.json).
    options: CaptionOptions | None = None
    result: CaptionResult | None = None  # set by the module once the result is made (and written)
    source: str = ""  # the input as the caller named it (the report shows it)
    report_poster: bool = False  # the report also writes the library index's picture of the video

    def report(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)


_contexts: dict[str, RunContext] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def registered(context: RunContext) -> Iterator[str]:
    """Register ``context`` for the block; yields the id to pass as the ``run_id`` option."""
    run_id = uuid.uuid4().hex
    with _lock:
        _contexts[run_id] = context
    try:
        yield run_id
    finally:
        # An abandoned run stays registered, so a module that only starts after the runner gave
        # up (its decoder was blocked opening the input) still learns that it must not write.
        if not context.activity.abandoned:
            with _lock:
                del _contexts[run_id]


def context_for(run_id: str | None) -> RunContext:
    """The context registered under ``run_id``, or a fresh unwatched one (no id: a user's graph)."""
    with _lock:
        context = _contexts.get(run_id) if run_id else None
    return context if context is not None else RunContext()
