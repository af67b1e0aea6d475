"""The model a run uses unless told otherwise, and where and in what precision a local model runs.

The option checks (:mod:`videocaption.options`), the CLI and both in-process backends read these
names; torch is imported only when a device or dtype is resolved, so checking options stays
cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from videocaption.errors import InvalidOptionError
from videocaption.options import DTYPES

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is cuda, then mps, then cpu; any other name must be usable on this machine.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.

    Raises:
        InvalidOptionError: the name is no device, or that device is not available here.
    """
    import torch

    if isinstance(device, torch.device):
        choice = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            choice = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidOptionError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if choice.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(f"device {str(choice)!r} was requested but CUDA is not available")
    if choice.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidOptionError("device 'mps' was requested but MPS is not available")
    if choice.type not in ("cpu", "cuda", "mps"):
        raise InvalidOptionError(f"unsupported device {str(choice)!r} (use auto, cpu, cuda, cuda:N or mps)")
    return choice


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (half the memory, native speed) and float32 elsewhere.

    Args:
        dtype: ``auto``, ``float32``, ``bfloat16``, ``float16`` or one of those ``torch.dtype``.
        device: where the model will run (decides ``auto``).

    Raises:
        InvalidOptionError: any other dtype.
    """
    import torch

    allowed = {name: getattr(torch, name) for name in DTYPES if name not in ("auto", "int8")}
    if isinstance(dtype, torch.dtype):
        if dtype not in allowed.values():
            raise InvalidOptionError(f"unsupported dtype {dtype} (use float32, bfloat16 or float16)")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "int8":  # the activations' dtype; the backend quantizes the weights
        return torch.bfloat16
    if dtype not in allowed:
        raise InvalidOptionError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return allowed[dtype]
