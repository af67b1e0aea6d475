import pytest

from videocaption.errors import InvalidOptionError
from videocaption.options import DEFAULT_MODEL, CaptionOptions


def test_defaults_match_the_documented_contract():
    options = CaptionOptions.from_mapping({})
    assert options.batch_size == 4
    assert options.result_path == "result.json"
    assert options.multithreading is False
    assert options.max_threads is None and options.batches_in_flight == 1
    assert options.pass_through is False
    assert options.fps == 1.0
    assert options.model == DEFAULT_MODEL
    assert (options.device, options.dtype) == ("auto", "auto")


def test_multithreading_defaults_to_several_batches_in_flight():
    assert CaptionOptions.from_mapping({"multithreading": True}).batches_in_flight > 1
    assert CaptionOptions.from_mapping({"multithreading": True, "max_threads": 3}).batches_in_flight == 3
    # Turning multithreading off again needs no special case: the default follows.
    assert CaptionOptions(multithreading=True).replace(multithreading=False).batches_in_flight == 1


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"batch_size": "4"}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"max_threads": -1, "multithreading": True}, "max_threads must be at least 1"),
        ({"max_threads": 2}, "max_threads needs multithreading"),
        ({"video_end": 0}, "video_end must be a positive number"),
        ({"request_timeout": float("inf")}, "request_timeout must be a positive number of seconds"),
        ({"multithreading": "yes"}, "multithreading must be true or false"),
        ({"pass_through": 1}, "pass_through must be true or false"),
        ({"fps": 0}, "fps must be a positive number"),
        ({"fps": float("nan")}, "fps must be a positive number"),
        ({"fps": "1"}, "fps must be a number"),
        ({"device": "tpu"}, "device must be one of"),
        ({"dtype": "int4"}, "dtype must be one of"),
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


def test_an_integer_fps_is_the_same_run_as_a_float_one():
    from PIL import Image

    from videocaption.checkpoint import fingerprint

    frame = Image.new("RGB", (8, 8))
    assert fingerprint(CaptionOptions(fps=2), frame) == fingerprint(CaptionOptions(fps=2.0), frame)


def test_every_option_with_a_flag_has_help_and_a_default_the_cli_uses():
    import dataclasses

    from videocaption.cli import build_parser

    defaults = vars(build_parser().parse_args([]))
    for field in dataclasses.fields(CaptionOptions):
        if field.metadata.get("flag", None) is not None:
            assert field.metadata["help"]
            assert defaults[field.name] == field.default, field.name
