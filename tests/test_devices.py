"""Where local models run: device and dtype names, resolved the same way by both local backends."""

import pytest
import torch

from videocaption.backends.devices import resolve_device, resolve_dtype
from videocaption.errors import InvalidOptionError


def test_auto_picks_the_best_device_here():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_dtype_is_bfloat16_on_cuda_only():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    assert resolve_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("int8", torch.device("cpu")) == torch.bfloat16  # int8 weights, bfloat16 activations


def test_unknown_or_unavailable_choices_are_option_errors():
    with pytest.raises(InvalidOptionError, match="unknown dtype 'int4'"):
        resolve_dtype("int4", torch.device("cpu"))
    with pytest.raises(InvalidOptionError, match="unsupported dtype"):
        resolve_dtype(torch.int8, torch.device("cpu"))
    with pytest.raises(InvalidOptionError, match="tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidOptionError, match="CUDA is not available"):
            resolve_device("cuda")
