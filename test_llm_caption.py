"""Demo: caption a video with DeepSeek-VL2 through a BMF graph.

    python test_llm_caption.py [VIDEO] [--model M] [--batch-size N] [--fps F] [--output PATH]
                               [--device D] [--multithreading --max-threads N] [--max-new-tokens N]

With no VIDEO it captions the bundled Big Buck Bunny clip. ``--help`` lists every option.
"""

import os
import signal
import sys


def _stopped_while_starting(signum, frame):
    """Ctrl-C or SIGTERM before the CLI is up: nothing was started, so nothing to keep or say."""
    os._exit(128 + signum)


# Importing the package takes a moment (torch); a signal meanwhile must not print a traceback.
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _stopped_while_starting)

from videocaption.cli.main import main  # noqa: E402

if __name__ == "__main__":
    code = main()
    # Leave without the interpreter's teardown (torch, BMF: seconds): it first resets the signal
    # handlers to the defaults, so a Ctrl-C or SIGTERM meanwhile would end a finished run with a
    # signal's status. Everything is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
