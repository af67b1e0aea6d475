"""Progress reports from a running captioner to whoever shows them (the CLI's progress bar).

The caller hands a :data:`ProgressCallback` to :class:`videocaption.captioning.captioner.Captioner`; through
a BMF graph it travels with the run (see :mod:`videocaption.graph.context`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    frames_sampled: int  # frames kept for captioning so far
    batches_done: int  # batches described so far
    stage: str  # "describing", "summarizing", "titling" or "done"


ProgressCallback = Callable[[Progress], None]
