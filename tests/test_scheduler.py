import threading
import time

import pytest
from PIL import Image

from videocaption.captioning.batching import FrameBatch
from videocaption.captioning.scheduler import BatchScheduler
from videocaption.result import BatchCaption
from videocaption.sampling.grid import SampledFrame


def batch(batch_id: int) -> FrameBatch:
    return FrameBatch(batch_id, [SampledFrame(Image.new("RGB", (4, 4)), float(batch_id))])


class SlowDescriber:
    """Describes batches by id, slower for odd ids, so calls finish out of submission order."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.calls: list[list[int]] = []
        self.active = 0
        self.peak_active = 0
        self.lock = threading.Lock()

    def __call__(self, group: list[FrameBatch]) -> list[BatchCaption]:
        with self.lock:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            self.calls.append([b.batch_id for b in group])
        time.sleep(self.seconds * (1 + group[0].batch_id % 2))
        with self.lock:
            self.active -= 1
        return [BatchCaption(b.batch_id, len(b.frames), b.start_time, b.end_time, f"batch {b.batch_id}") for b in group]


@pytest.mark.parametrize("max_in_flight", [1, 2, 4])
def test_results_come_back_in_video_order_with_bounded_queue(max_in_flight):
    describer = SlowDescriber()
    scheduler = BatchScheduler(describer, max_in_flight)
    collected = []
    for batch_id in range(1, 14):
        scheduler.submit(batch(batch_id))
        collected += scheduler.take_finished(len(collected) + 1)
    scheduler.join()
    collected += scheduler.take_finished(len(collected) + 1)
    assert [c.batch_id for c in collected] == list(range(1, 14))
    assert scheduler.peak_in_flight <= max_in_flight
    assert max(len(call) for call in describer.calls) <= max_in_flight
    assert describer.peak_active == 1  # one model call at a time: one model instance
    assert sorted(i for call in describer.calls for i in call) == list(range(1, 14))


def test_waiting_batches_are_described_together():
    describer = SlowDescriber(seconds=0.05)
    scheduler = BatchScheduler(describer, max_in_flight=4)
    for batch_id in range(1, 13):
        scheduler.submit(batch(batch_id))
    scheduler.join()
    assert max(scheduler.group_sizes) == 4
    assert len(describer.calls) < 12


def test_the_first_call_waits_for_a_full_group():
    """The model is idle when the first batch arrives: describing it alone would leave the next
    ones queued behind it (groups 1, 4, 3 for 8 batches instead of 4, 4)."""
    describer = SlowDescriber(seconds=0.05)
    scheduler = BatchScheduler(describer, max_in_flight=4)
    for batch_id in range(1, 9):
        scheduler.submit(batch(batch_id))
        time.sleep(0.02)  # batches arrive at the decoder's pace, not all at once
    scheduler.join()
    assert scheduler.group_sizes[0] == 4


def test_submit_blocks_while_the_queue_is_full():
    release = threading.Event()

    def blocked(group):
        release.wait(5)
        return [BatchCaption(b.batch_id, 1, 0, 0, "x") for b in group]

    scheduler = BatchScheduler(blocked, max_in_flight=2)
    scheduler.submit(batch(1))
    scheduler.submit(batch(2))
    third = threading.Thread(target=scheduler.submit, args=(batch(3),))
    third.start()
    third.join(0.2)
    assert third.is_alive(), "a third batch must wait for a free slot"
    release.set()
    third.join(5)
    scheduler.join()
    assert scheduler.peak_in_flight == 2


def test_worker_failure_reaches_the_producer_and_does_not_deadlock():
    def broken(group):
        raise KeyError("bug in describe")

    scheduler = BatchScheduler(broken, max_in_flight=1)
    scheduler.submit(batch(1))
    with pytest.raises(KeyError):
        for batch_id in range(2, 5):
            scheduler.submit(batch(batch_id))
        scheduler.join()


def test_with_workers_a_slow_call_does_not_hold_the_others_back():
    # A model server: one batch a call, max_in_flight calls at once.
    describer = SlowDescriber(seconds=0.01)
    release_batch_1 = threading.Event()

    def describe(group):
        if group[0].batch_id == 1:
            assert release_batch_1.wait(timeout=30)
        return describer(group)

    scheduler = BatchScheduler(describe, max_in_flight=3, workers=3)
    for batch_id in range(1, 9):
        scheduler.submit(batch(batch_id))
    deadline = time.monotonic() + 30
    while len(describer.calls) < 7:  # batch 1 is still out: the other workers do every other batch
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert describer.calls and all(len(call) == 1 for call in describer.calls)
    assert scheduler.take_finished(1) == []  # video order: nothing before batch 1
    release_batch_1.set()
    scheduler.join()
    assert [c.batch_id for c in scheduler.take_finished(1)] == list(range(1, 9))
    assert scheduler.peak_in_flight == 3


def test_batches_finished_before_a_failure_are_still_handed_out():
    describer = SlowDescriber(seconds=0)

    def fails_on_batch_3(group):
        if any(b.batch_id == 3 for b in group):
            raise ConnectionError("endpoint gone")
        return describer(group)

    scheduler = BatchScheduler(fails_on_batch_3, max_in_flight=1)
    with pytest.raises(ConnectionError):
        for batch_id in range(1, 6):
            scheduler.submit(batch(batch_id))
        scheduler.join()
    assert [c.batch_id for c in scheduler.take_finished(1)] == [1, 2]


def test_described_batches_release_their_images():
    scheduler = BatchScheduler(SlowDescriber(0), max_in_flight=1)
    submitted = batch(1)
    scheduler.submit(submitted)
    scheduler.join()
    assert submitted.frames[0].image is None and submitted.frames[0].timestamp == 1.0
