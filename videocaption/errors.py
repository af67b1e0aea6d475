"""Exceptions the library raises.

Every error a user can cause (a bad option, a missing video, a model that cannot be found)
derives from :class:`CaptionError`, so the CLI and the BMF module can catch them at the top,
print one line and exit with code 2, while real bugs still surface as tracebacks.
"""


class CaptionError(Exception):
    """Base class for problems caused by the input or the configuration, not by a bug."""


class InvalidOptionError(CaptionError, ValueError):
    """An option has an unknown name, a wrong type or a value outside its range."""


class VideoInputError(CaptionError):
    """The input is missing, unreadable, not a video, or has no video stream."""


class OutputError(CaptionError):
    """A result, subtitle or checkpoint file cannot be written (a directory, a full disk, ...).

    The message names the path and the cause; what was already written is left as it was.
    """


class ModelLoadError(CaptionError):
    """The model cannot be found or its files do not match the architecture."""


class MissingDependencyError(CaptionError):
    """A feature's optional package is not installed; the message names the pip command."""


class ContextOverflowError(CaptionError, ValueError):
    """A prompt would need more tokens than the model's context holds."""


class BackendError(CaptionError):
    """A model server failed a request, after retries where retrying could help.

    Args:
        message: what failed; names the endpoint URL and the status or cause.
        endpoint: the URL that failed.
        status: the HTTP status, or None when no answer came (refused, timed out).
    """

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
