"""videocaption: describe a video with a vision-language model, batch by batch.

The Python API (``docs/api.md``)::

    from videocaption import caption_video

    result = caption_video("in.mp4", batch_size=4)
    print(result.video_title, result.summary)

Importing the package is quick: its names are imported on first use (PEP 562), and BMF, torch
and the model only when :func:`caption_video` first runs. (Importing nothing up front also lets
``python -m videocaption.options`` run that module without it being imported twice.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names, and the module each comes from.
_EXPORTS = {
    "caption_video": "videocaption.api",
    "CaptionOptions": "videocaption.options",
    "CaptionResult": "videocaption.result",
    "BatchCaption": "videocaption.result",
    "MediaInfo": "videocaption.media.probe",
    "probe_media": "videocaption.media.probe",
    "CaptionError": "videocaption.errors",
    "InvalidOptionError": "videocaption.errors",
    "VideoInputError": "videocaption.errors",
    "OutputError": "videocaption.errors",
    "ModelLoadError": "videocaption.errors",
    "ContextOverflowError": "videocaption.errors",
    "BackendError": "videocaption.errors",
}
__all__ = [
    "caption_video",
    "CaptionOptions",
    "CaptionResult",
    "BatchCaption",
    "MediaInfo",
    "probe_media",
    "CaptionError",
    "InvalidOptionError",
    "VideoInputError",
    "OutputError",
    "ModelLoadError",
    "ContextOverflowError",
    "BackendError",
]
assert set(__all__) == set(_EXPORTS)

if TYPE_CHECKING:
    from videocaption.api import caption_video
    from videocaption.errors import (
        BackendError,
        CaptionError,
        ContextOverflowError,
        InvalidOptionError,
        ModelLoadError,
        OutputError,
        VideoInputError,
    )
    from videocaption.media.probe import MediaInfo, probe_media
    from videocaption.options import CaptionOptions
    from videocaption.result import BatchCaption, CaptionResult


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videocaption' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
