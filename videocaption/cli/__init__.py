"""The command line: ``llm-caption`` (console script), ``python -m videocaption``, ``python test_llm_caption.py``.

:func:`run` is the entry point of all three. It is kept apart from :mod:`videocaption.cli.main`
so that it can take Ctrl-C and SIGTERM before the heavy imports (torch, BMF) start.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM before the CLI is up: nothing was started, so nothing to keep or say."""
    os._exit(128 + signum)


def run(argv: list[str] | None = None) -> None:
    """Run the CLI and leave the process with its exit code.

    Importing the package takes a moment (torch); a signal meanwhile must not print a
    traceback. At the end the process leaves without the interpreter's teardown (torch, BMF:
    seconds), which would first reset the signal handlers to the defaults, so a Ctrl-C or
    SIGTERM meanwhile would end a finished run with a signal's status. Everything is written
    and closed by then.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopped_while_starting)

    from videocaption.cli.main import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
