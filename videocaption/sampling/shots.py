"""What changed between two frames: luma thumbnails, hard cuts, and near-duplicates.

Both measures compare *thumbnails*: the frame's luma (Y) plane averaged over a grid of about
32 x 18 cells. Averaging is what makes them robust: sensor noise and compression artefacts
are uncorrelated from pixel to pixel, so a cell mean over the 25 luma samples it is built from
(every 8th pixel in each direction at 720p, then 5 x 5 of those) divides their spread by about
five, while anything a viewer would notice (an object moving, a new slide, a cut) moves whole
cells. Reading the Y plane that the decoder already produced costs no colour conversion: the
whole measure is a strided view plus one small mean, tens of microseconds at 720p (see
``benchmarks/bench_sampling.py``), against milliseconds to decode the frame.

- :func:`scene_change`: the mean absolute difference of two thumbnails (0-255). Between two
  consecutive *decoded* frames of one shot it stays small (a few levels even with fast motion,
  since consecutive frames are 1/25-1/60 s apart); a hard cut replaces the whole picture and
  moves it by tens of levels. The same idea as PySceneDetect's ``ContentDetector`` (mean
  HSV difference, default threshold 27), on luma only.
- :func:`changed_area`: the fraction of cells whose mean moved by more than
  :data:`CELL_TOLERANCE` levels, between a sampled frame and the last frame sent to the model.
  A mean over the whole picture would let a small moving subject (a speaker's hands, a
  ticker) vanish into a static background; a count of changed cells does not.

Gradual transitions (fades, dissolves) are no hard cut and are not detected as one; their
frames are simply not duplicates of each other.
"""

from __future__ import annotations

import numpy as np

# Thumbnail grid (rows, columns): coarse enough to average noise away, fine enough that a
# subject covering ~1/500 of the picture still moves a cell.
GRID = (18, 32)
# Luma levels (0-255) a cell mean may move by without counting as changed: well above what
# noise leaves after averaging (about 1-2 levels for visible noise), well below what a moving
# edge does.
CELL_TOLERANCE = 8.0
# Luma samples per thumbnail cell side, before averaging (see the module docstring).
SAMPLES_PER_CELL = 5


def luma_thumbnail(luma: np.ndarray) -> np.ndarray:
    """The ``GRID`` thumbnail (float32, luma levels 0-255) of a 2-D luma plane.

    Args:
        luma: an (height, width) integer array; uint8, or uint16 (10-, 12- or 16-bit video),
            which is scaled to 8 bits.
    """
    if luma.ndim != 2 or min(luma.shape) == 0:
        raise ValueError(f"a luma plane must be a non-empty 2-D array, got shape {luma.shape}")
    height, width = luma.shape
    rows, columns = min(GRID[0], height), min(GRID[1], width)
    # Every step-th pixel: SAMPLES_PER_CELL x SAMPLES_PER_CELL of them a cell, so the cost does
    # not grow with the resolution.
    step = max(1, min(height // (rows * SAMPLES_PER_CELL), width // (columns * SAMPLES_PER_CELL)))
    cell_h, cell_w = (height // step) // rows, (width // step) // columns
    # One small copy, then two sums over contiguous axes: several times faster than a mean over
    # two strided axes of the view (it runs on every frame looked at).
    samples = np.ascontiguousarray(
        luma[: cell_h * rows * step : step, : cell_w * columns * step : step], dtype=np.float32
    )
    thumbnail = samples.reshape(rows, cell_h, columns * cell_w).sum(axis=1)
    thumbnail = thumbnail.reshape(rows, columns, cell_w).sum(axis=2) * (1.0 / (cell_h * cell_w))
    if luma.dtype != np.uint8:
        thumbnail *= 255.0 / _max_value(luma)
    return thumbnail


def _max_value(luma: np.ndarray) -> float:
    """Full scale of an integer plane: 1023 for 10-bit video stored in uint16, else the dtype's."""
    peak = int(luma.max())
    for bits in (10, 12, 16):
        if peak < (1 << bits):
            return float((1 << bits) - 1)
    return float(np.iinfo(luma.dtype).max)


def scene_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute luma difference (0-255) of two thumbnails; large at a hard cut."""
    if previous.shape != current.shape:  # a resolution change mid-stream: a new picture
        return 255.0
    return float(np.abs(current - previous).mean())


def changed_area(previous: np.ndarray, current: np.ndarray) -> float:
    """Fraction (0-1) of thumbnail cells that moved by more than CELL_TOLERANCE levels."""
    if previous.shape != current.shape:
        return 1.0
    return float((np.abs(current - previous) > CELL_TOLERANCE).mean())
