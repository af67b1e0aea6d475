"""Runs the model on a worker thread behind a bounded queue, batching what is waiting.

Decoding (BMF's thread, calling :meth:`BatchScheduler.submit`) and inference (the worker)
overlap, and at most ``max_in_flight`` batches are queued or being described at any time:
``submit`` blocks when that many are out, which is what holds the decoder back (backpressure)
and keeps memory flat however long the video is. When several batches wait, the worker
describes them together in one batched model call (dynamic batching) instead of one thread
per batch, so one model instance serves them all. A model server is different: it batches
requests itself, so there each of ``max_in_flight`` workers sends one batch a call and a slow
request never holds back the others.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from videocaption.captioning.batching import FrameBatch
from videocaption.result import BatchCaption

DescribeGroup = Callable[[list[FrameBatch]], list[BatchCaption]]


class BatchScheduler:
    """A single model worker with a bounded number of batches in flight.

    Args:
        describe_group: describes a list of batches in one call and returns their captions
            (in the same order). It should turn model failures into captions with ``error``
            set; anything it raises stops the scheduler and is re-raised to the caller.
        max_in_flight: the most batches queued or being described at once; also the most
            batches described together.
        workers: model calls made at once. 1 (a local model): waiting batches are grouped
            into one batched call. More (a model server): each worker describes one batch a
            call, so that many requests stay in flight.
        gather_window: when fewer than ``max_in_flight`` batches wait, the worker waits up to
            this fraction of its last call's duration for more, so that steady streams form
            full groups instead of alternating small and large ones.
        first_gather_s: before its first call the worker has no duration to go by: it waits up
            to this many seconds for a full group. Without it the first batch went alone (the
            model idle, nothing else decoded yet) and the rest queued behind it: groups of
            1, 4, 3 for 8 batches instead of 4, 4, a third of batching's gain lost.
    """

    def __init__(
        self,
        describe_group: DescribeGroup,
        max_in_flight: int,
        *,
        workers: int = 1,
        gather_window: float = 0.1,
        first_gather_s: float = 2.0,
    ) -> None:
        self._describe_group = describe_group
        self.max_in_flight = max_in_flight
        self._gather_window = gather_window
        self._first_gather_s = first_gather_s
        self._slots = threading.Semaphore(max_in_flight)
        self._queue: queue.Queue[FrameBatch | None] = queue.Queue()
        self._lock = threading.Condition()
        self._finished: dict[int, BatchCaption] = {}
        self._in_flight = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._input_closed = False
        self._last_call_seconds = 0.0
        self.peak_in_flight = 0  # the most batches that were ever out at once (tests read it)
        self.group_sizes: list[int] = []  # how many batches each model call described
        self._group_limit = max_in_flight if workers == 1 else 1
        self._workers = [
            threading.Thread(target=self._run, name=f"videocaption-model-{n}", daemon=True) for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    # -- producer side (BMF's thread) -------------------------------------------------------

    def submit(self, batch: FrameBatch) -> None:
        """Queue a full batch; blocks while ``max_in_flight`` batches are out.

        After :meth:`stop` the batch is dropped: the run is being abandoned.
        """
        while not self._slots.acquire(timeout=0.05):
            self._raise_if_failed()
            if self._stopped:
                return
        self._raise_if_failed()
        if self._stopped:
            self._slots.release()
            return
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        self._queue.put(batch)

    def wait_for_room(self, timeout: float) -> bool:
        """Whether :meth:`submit` would not block (waiting up to ``timeout`` s for a free slot).

        True too once the worker failed or the scheduler stopped: :meth:`submit` then says so.
        """
        with self._lock:
            return self._lock.wait_for(
                lambda: self._in_flight < self.max_in_flight or self._error is not None or self._stopped, timeout
            )

    def take_finished(self, next_id: int) -> list[BatchCaption]:
        """Captions finished so far that continue the video-order sequence at ``next_id``.

        Never raises, even after the worker failed: what finished before the failure is
        still handed out (and checkpointed by the caller); :meth:`submit` and :meth:`join`
        raise the failure.
        """
        with self._lock:
            ready = []
            while next_id in self._finished:
                ready.append(self._finished.pop(next_id))
                next_id += 1
            return ready

    def close_input(self) -> None:
        """No more batches will come: let the worker finish what is queued."""
        if not self._input_closed:
            self._input_closed = True
            self._queue.put(None)

    def join(self) -> None:
        """Wait until every submitted batch is described (after :meth:`close_input`)."""
        self.close_input()
        for worker in self._workers:
            while worker.is_alive():
                worker.join(timeout=0.1)
        self._raise_if_failed()

    def stop(self) -> None:
        """Stop early: queued batches are dropped; the call in progress finishes first."""
        self._stopped = True
        while True:
            try:
                dropped = self._queue.get_nowait()
            except queue.Empty:
                break
            if dropped is not None:
                self._release(1)
        self._input_closed = True
        self._queue.put(None)  # the end marker, even if draining took an earlier one
        for worker in self._workers:
            worker.join()

    # -- worker side ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopped:
                group = self._gather()
                if not group:
                    return
                started = time.perf_counter()
                captions = self._describe_group(group)
                self._last_call_seconds = time.perf_counter() - started
                self.group_sizes.append(len(group))
                with self._lock:
                    for caption in captions:
                        self._finished[caption.batch_id] = caption
                    self._lock.notify_all()
                for batch in group:
                    batch.release()
                self._release(len(group))
        except BaseException as error:  # noqa: BLE001 - re-raised on the producer's thread
            self._error = error
            self._release(self.max_in_flight)

    def _gather(self) -> list[FrameBatch]:
        """Block for one batch, then take what else waits (briefly waiting for more)."""
        first = self._queue.get()
        if first is None:  # end of input: leave the marker for the other workers
            self._queue.put(None)
            return []
        group = [first]
        window = self._gather_window * self._last_call_seconds if self.group_sizes else self._first_gather_s
        deadline = time.perf_counter() + window
        while len(group) < self._group_limit:
            timeout = deadline - time.perf_counter()
            try:
                batch = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if batch is None:  # end of input: describe what we have, then stop
                self._queue.put(None)
                break
            group.append(batch)
        return group

    def _release(self, count: int) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - count)
            self._lock.notify_all()
        for _ in range(count):
            self._slots.release()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
