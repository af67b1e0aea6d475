from PIL import Image

from videocaption.captioning.batching import FrameBatcher
from videocaption.sampling.grid import FrameSampler, SampledFrame


def frames(count: int):
    return [SampledFrame(Image.new("RGB", (8, 8)), float(i)) for i in range(count)]


def test_uneven_frame_counts_leave_a_short_last_batch():
    batcher = FrameBatcher(batch_size=4)
    full = [b for b in (batcher.add(f) for f in frames(10)) if b is not None]
    last = batcher.flush()
    assert [b.batch_id for b in full] == [1, 2]
    assert [len(b.frames) for b in full] == [4, 4]
    assert last.batch_id == 3 and len(last.frames) == 2
    assert last.timestamps == [8.0, 9.0]
    assert batcher.flush() is None


def test_exact_multiple_has_no_empty_last_batch():
    batcher = FrameBatcher(batch_size=3)
    for frame in frames(6):
        batcher.add(frame)
    assert batcher.flush() is None


def test_sampler_keeps_one_frame_per_interval_from_every_frame_at_25_fps():
    sampler = FrameSampler(fps=1.0)
    kept = [i / 25 for i in range(132) if sampler.want(i / 25)]
    assert kept == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_sampler_keeps_every_frame_already_extracted_at_fps():
    sampler = FrameSampler(fps=2.0)
    assert all(sampler.want(t / 2) for t in range(10))


def test_sampler_skips_gaps_without_bursting():
    sampler = FrameSampler(fps=1.0)
    kept = [t for t in [0.0, 0.5, 7.2, 7.4, 8.1, 8.3, 9.3] if sampler.want(t)]
    assert kept == [0.0, 7.2, 8.1, 9.3]
