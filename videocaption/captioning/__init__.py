"""The captioning core: sampled frames in, a :class:`~videocaption.result.CaptionResult` out.

Batching, scheduling model calls, describing with split-retry, merging speech, summary rounds,
the title and result assembly, shared by file runs, live runs and library workers.
"""
