import dataclasses

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

    from videocaption.captioning.checkpoint import fingerprint

    frame = Image.new("RGB", (8, 8))
    assert fingerprint(CaptionOptions(fps=2), frame) == fingerprint(CaptionOptions(fps=2.0), frame)


def test_every_option_with_a_flag_has_help_and_a_default_the_cli_uses():
    import dataclasses

    from videocaption.cli.main import build_parser

    defaults = vars(build_parser().parse_args([]))
    for field in dataclasses.fields(CaptionOptions):
        if field.metadata.get("flag", None) is not None:
            assert field.metadata["help"]
            # The field's default, or the flag's own declared beside it (result_path only: the
            # library writes no file unless asked, the CLI writes result.json).
            assert defaults[field.name] == field.metadata["argparse"].get("default", field.default), field.name
    assert (defaults["result_path"], CaptionOptions().result_path) == ("result.json", None)


def test_no_result_path_means_no_file_and_no_resume():
    assert CaptionOptions(result_path=None).result_path is None  # the library's default: nothing written
    with pytest.raises(InvalidOptionError, match="resume needs result_path"):
        CaptionOptions(resume=True)
    assert CaptionOptions(resume=True, result_path="r.json").resume


# Each option's roles live in its field's metadata; these are the lists the modules kept before
# (live/captioner.py LIVE_OPTIONS, captioning/checkpoint.py FINGERPRINTED_OPTIONS and
# ADAPTIVE_OPTIONS, library/workers.py video_options, cli/main.py's --live refusal), so a role
# changes only on purpose.
def test_the_roles_in_the_fields_are_the_lists_the_modules_kept():
    from videocaption.options import options_with_role

    assert set(options_with_role("live_only")) == {
        "jsonl_path",
        "summary_every",
        "summary_all",
        "reconnect",
        "reconnect_delay",
        "stall_timeout",
        "max_pending_frames",
    }
    assert set(options_with_role("fingerprint")) == {
        "model",
        "batch_size",
        "fps",
        "prompt",
        "max_new_tokens",
        "time_aware",
        "dtype",
        "events",  # with events the batches have them: a checkpoint without must not be resumed
        "events_schema",
    }
    assert set(options_with_role("fingerprint", "adaptive")) == {
        "sampling",
        "scene_threshold",
        "duplicate_threshold",
        "max_gap",
    }
    assert set(options_with_role("library", "per_video")) == {
        "result_path",
        "srt_path",
        "vtt_path",
        "report_path",
        "resume",
        "video_end",
    }
    assert options_with_role("library", "refused") == ("live",)
    with pytest.raises(ValueError, match="unknown option role"):
        options_with_role("fingerprinted")


def test_library_workers_set_exactly_the_per_video_options():
    import dataclasses

    from videocaption.library.inputs import LibraryItem
    from videocaption.library.workers import video_options
    from videocaption.options import options_with_role

    given = CaptionOptions(srt_path="a.srt", vtt_path="a.vtt", report_path="a.html", result_path="given.json")
    per_video = video_options(given, "out", LibraryItem("in/a.mp4", "a"))
    changed = {
        field.name
        for field in dataclasses.fields(CaptionOptions)
        if getattr(per_video, field.name) != getattr(given, field.name)
    }
    # video_end too, from the probe, in CaptionWorker.caption.
    assert changed | {"video_end"} == set(options_with_role("library", "per_video"))


def test_only_live_options_changed_are_reported():
    from videocaption.options import options_changed, options_with_role

    options = CaptionOptions(reconnect=5, batch_size=2, jsonl_path="-")
    assert options_changed(options, options_with_role("live_only")) == ["jsonl_path", "reconnect"]
    assert options_changed(CaptionOptions(), options_with_role("live_only")) == []


def test_docs_options_table_is_the_generated_one():
    from pathlib import Path

    from videocaption.options import update_options_doc

    doc = Path(__file__).resolve().parents[1] / "docs" / "options.md"
    text = doc.read_text(encoding="utf-8")
    assert text == update_options_doc(text), (
        "docs/options.md's table differs from the options' fields; regenerate it with: "
        ".venv/bin/python -m videocaption.options --update docs/options.md"
    )


def test_the_table_has_every_option_once_with_its_flag():
    from videocaption.options import options_table_markdown

    table = options_table_markdown()
    for field in dataclasses.fields(CaptionOptions):
        assert table.count(f"| `{field.name}` |") == 1, field.name
    assert "| `result_path` | `--output` | `result.json` |" in table
    assert "%(default)s" not in table
