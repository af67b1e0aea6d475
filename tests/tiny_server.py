"""``transformers serve`` on a loopback port, for the openai-backend tests and benchmark.

An OpenAI-compatible server that runs here without a GPU or a download: the tests point the
openai backend at it with a tiny checkpoint from :mod:`tiny_vlms`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

START_SECONDS = 90  # importing transformers and loading a model, on a busy 2-core machine


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def transformers_serve(
    log_path: Path, arguments: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start ``transformers serve [arguments]``; yield its ``/v1`` base URL once healthy; stop it.

    Raises:
        RuntimeError: the server exited or was not healthy within :data:`START_SECONDS`; the
            message ends with the last lines of its log.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        *arguments,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", **(env or {}))
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    try:
        _wait_until_healthy(process, port, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_healthy(process: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"transformers serve did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
