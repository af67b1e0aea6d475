"""One long-lived thread runs all of the model's torch work in this process.

Why: on CPU each thread that runs a parallel torch op gets its own OpenMP team (libgomp keeps a
pool of worker threads per calling thread, for the calling thread's lifetime). In the pipeline
the model used to be built on one thread, called on the scheduler's worker and on BMF's thread
(summary, titles), so the process held several pools. Once pools hold more threads than there
are CPUs, libgomp cuts every worker's spin-wait to a few hundred iterations: the model's
threads then sleep and wake at every parallel region (thousands of voluntary context switches a
second, a third or more of the CPU idle), and the same calls ran 1.4-1.9x slower inside the
pipeline than alone. With every load, warm-up and call on one thread there is one pool however
many threads call the model, and its workers spin between the regions of a call as they do in
a benchmark that calls the model from its main thread.

:func:`run_on_model_thread` is re-entrant (a call made on the model thread runs directly) and
passes exceptions through. It serialises calls, which the backend does anyway (one device, one
generate at a time).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

THREAD_NAME = "deepseek-vl2-model"
_lock = threading.Lock()
_jobs: queue.SimpleQueue | None = None
_thread_ident: int | None = None


def _serve(jobs: queue.SimpleQueue) -> None:
    """The model thread: run each job in turn, forever; its OpenMP team is the process's only one."""
    while True:
        future, fn, args, kwargs = jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                future.set_exception(exc)


def _model_jobs() -> queue.SimpleQueue:
    global _jobs, _thread_ident
    with _lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            # A daemon: Ctrl-C ends the process without waiting for a generate in progress
            # (a ThreadPoolExecutor worker would be joined at exit).
            thread = threading.Thread(target=_serve, args=(_jobs,), name=THREAD_NAME, daemon=True)
            thread.start()
            _thread_ident = thread.ident
        return _jobs


def on_model_thread() -> bool:
    """True when called from the model thread."""
    return _thread_ident is not None and threading.get_ident() == _thread_ident


def run_on_model_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on the model thread; its result, or its exception re-raised here."""
    if on_model_thread():
        return fn(*args, **kwargs)
    future: Future = Future()
    _model_jobs().put((future, fn, args, kwargs))
    return future.result()


def model_thread_native_id() -> int:
    """The OS thread id of the model thread (started if need be), e.g. to read its /proc counters."""
    return run_on_model_thread(threading.get_native_id)
