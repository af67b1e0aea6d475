"""BMF audio frames to the 16 kHz mono float32 samples the detector and recognisers take.

The caption graph already resamples in FFmpeg (``aresample`` + ``aformat``), so this is a
copy there; a graph that wires audio differently (another rate, 6 channels, 16-bit samples)
still works, converted here with a plain linear resampler.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000  # what Silero VAD and Whisper take


def audio_frame_samples(frame) -> np.ndarray:
    """The samples of a ``bmf.AudioFrame`` as 16 kHz mono float32 in [-1, 1].

    Raises:
        ValueError: a frame without samples or with a sample rate of 0.
    """
    planes = [plane.numpy() for plane in frame.planes]
    channels = max(1, int(frame.nchannels))
    if frame.planer:  # one plane per channel, each (nsamples,) or (nsamples, 1)
        samples = np.stack([p.reshape(-1) for p in planes], axis=1)
    else:  # interleaved: one plane (nsamples, channels)
        samples = planes[0].reshape(-1, channels)
    return to_mono_16k(samples, float(frame.sample_rate))


def to_mono_16k(samples: np.ndarray, sample_rate: float) -> np.ndarray:
    """``(nsamples, channels)`` samples of any dtype and rate as 16 kHz mono float32."""
    if sample_rate <= 0:
        raise ValueError(f"audio frame with sample rate {sample_rate}")
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float32) - (info.max + info.min + 1) / 2) / (info.max + 1)
    mono = samples.astype(np.float32, copy=False).reshape(len(samples), -1).mean(axis=1)
    if round(sample_rate) == SAMPLE_RATE or len(mono) == 0:
        return np.ascontiguousarray(mono, dtype=np.float32)
    count = max(1, round(len(mono) * SAMPLE_RATE / sample_rate))
    positions = np.arange(count) * (sample_rate / SAMPLE_RATE)
    return np.interp(positions, np.arange(len(mono)), mono).astype(np.float32)
