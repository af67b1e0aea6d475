import pytest

from videocaption.errors import InvalidOptionError
from videocaption.options import DEFAULT_MODEL, CaptionOptions


def test_defaults_match_the_documented_contract():
    options = CaptionOptions.from_mapping({})
    assert options.batch_size == 4
    assert options.result_path == "result.json"
    assert options.multithreading is False
    assert options.max_threads == 1
    assert options.pass_through is False
    assert options.fps == 1.0
    assert options.model == DEFAULT_MODEL
    assert (options.device, options.dtype) == ("auto", "auto")


def test_multithreading_defaults_to_several_batches_in_flight():
    assert CaptionOptions.from_mapping({"multithreading": True}).max_threads > 1
    assert CaptionOptions.from_mapping({"multithreading": True, "max_threads": 3}).max_threads == 3


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"batch_size": "4"}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"max_threads": -1, "multithreading": True}, "max_threads must be at least 1"),
        ({"max_threads": 2}, "multithreading is off"),
        ({"multithreading": "yes"}, "multithreading must be true or false"),
        ({"pass_through": 1}, "pass_through must be true or false"),
        ({"fps": 0}, "fps must be a positive number"),
        ({"fps": float("nan")}, "fps must be a positive number"),
        ({"fps": "1"}, "fps must be a number"),
        ({"device": "tpu"}, "device must be one of"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"result_path": None}, "result_path must be a non-empty string"),
        ({"batchsize": 4}, "unknown option 'batchsize'"),
        ({"colour": 1, "size": 2}, "unknown options 'colour', 'size'"),
    ],
)
def test_bad_options_are_refused_with_a_message_naming_them(values, message):
    with pytest.raises(InvalidOptionError, match=message):
        CaptionOptions.from_mapping(values)


def test_cuda_index_is_accepted():
    assert CaptionOptions(device="cuda:1").device == "cuda:1"


def test_fps_is_stored_as_float():
    assert CaptionOptions(fps=2).fps == 2.0
