"""videocaption: describe a video with a vision-language model, batch by batch.

The Python API (``docs/api.md``)::

    from videocaption import caption_video

    result = caption_video("in.mp4", batch_size=4)
    print(result.video_title, result.summary)

Importing the package is quick: BMF, torch and the model load on the first call.
"""

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
