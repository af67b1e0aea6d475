import dataclasses
import io
import json
import os

import pytest
import srt
import webvtt

from videocaption.errors import OutputError
from videocaption.options import CaptionOptions
from videocaption.outputs.files import write_atomic
from videocaption.outputs.writers import WriteJSON, WriteSRT, WriteVTT, format_timestamp, write_outputs
from videocaption.result import BatchCaption, CaptionResult


def make_result() -> CaptionResult:
    batches = [
        BatchCaption(1, 4, 0.0, 3.0, "A rabbit wakes up.", 0.5),
        BatchCaption(2, 4, 4.0, 7.0, "It walks out\n\nof its burrow.", 0.7),
        BatchCaption(3, 1, 3725.5, 3725.5, "The end.", 0.3),
    ]
    return CaptionResult("Bunny", "A rabbit wakes up and leaves.", 4, batches, "tiny", 1.0, 9.5)


def test_json_keeps_the_original_schema_and_adds_fields():
    document = make_result().to_dict()
    assert list(document)[:5] == ["video_title", "batch_size", "batches", "frames_analysed", "summary"]
    assert document["frames_analysed"] == 9
    assert document["batches"][0] == {
        "batch_id": 1,
        "frames": 4,
        "description": "A rabbit wakes up.",
        "start_time": 0.0,
        "end_time": 3.0,
    }
    assert document["average_inference"] == pytest.approx(0.5)
    assert document["model"] == "tiny" and document["fps"] == 1.0 and document["turnaround_time"] == 9.5


def test_json_writer_accepts_a_handle():
    buffer = io.StringIO()
    WriteJSON().write_result(make_result(), buffer)
    assert json.loads(buffer.getvalue())["video_title"] == "Bunny"


def test_timestamps():
    assert format_timestamp(3725.5, always_include_hours=True, decimal_marker=",") == "01:02:05,500"
    assert format_timestamp(5.0, always_include_hours=False, decimal_marker=".") == "00:05.000"


def test_srt_parses_and_matches_batch_times(tmp_path):
    path = WriteSRT()(make_result(), tmp_path / "out.srt")
    cues = list(srt.parse(path.read_text()))
    assert [c.start.total_seconds() for c in cues] == [0.0, 4.0, 3725.5]
    assert [c.end.total_seconds() for c in cues] == [4.0, 3725.5, 3726.5]
    assert cues[1].content == "It walks out\nof its burrow."


def test_vtt_parses_and_matches_batch_times(tmp_path):
    path = WriteVTT()(make_result(), tmp_path / "out.vtt")
    captions = webvtt.read(str(path))
    assert [c.start_in_seconds for c in captions] == [0, 4, 3725]
    assert captions[0].text == "A rabbit wakes up."


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")

    with pytest.raises(TypeError):
        write_atomic(target, object())  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_the_last_cue_never_ends_after_the_video(tmp_path):
    # The last frame (3725.5 s) stands for one sampling interval, unless the video ends sooner.
    result = dataclasses.replace(make_result(), video_end=3725.9)
    cues = list(srt.parse(WriteSRT()(result, tmp_path / "out.srt").read_text()))
    assert [c.end.total_seconds() for c in cues] == [4.0, 3725.5, 3725.9]
    assert result.to_dict()["batches"][-1]["end_time"] == 3725.5  # result.json keeps the frame time
    assert "video_end" not in result.to_dict()


def test_outputs_are_written_all_together_or_not_at_all(tmp_path):
    (tmp_path / "result.json").write_text("old")
    (tmp_path / "result.vtt").mkdir()  # the last of the three cannot be written
    options = CaptionOptions(
        result_path=str(tmp_path / "result.json"),
        srt_path=str(tmp_path / "result.srt"),
        vtt_path=str(tmp_path / "result.vtt"),
    )
    with pytest.raises(OutputError, match="result.vtt: is a directory"):
        write_outputs(make_result(), options)
    assert (tmp_path / "result.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.vtt"]

    os.rmdir(tmp_path / "result.vtt")
    write_outputs(make_result(), options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.srt", "result.vtt"]
    assert json.loads((tmp_path / "result.json").read_text())["video_title"] == "Bunny"


def test_an_unwritable_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"file/result.json: cannot be written \(.*/file is not a directory\)"):
        write_atomic(tmp_path / "file" / "result.json", "{}")


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    # mkstemp's 0600 must not leak into result files: same mode as a file open() creates.
    write_atomic(tmp_path / "result.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "result.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode


def test_shots_counts_the_shots_described_as_the_cli_lists_them():
    """Issue 26 #21: the CLI printed '6 shots', result.json said 7 (a shot too short for any sample)."""
    import dataclasses

    from videocaption.sampling.samplers import shot_spans

    result = make_result()
    shots = [0, 1, 3]  # shot 2 lay between two samples: no batch
    result = dataclasses.replace(
        result, batches=[dataclasses.replace(batch, shot=shot) for batch, shot in zip(result.batches, shots)]
    )
    document = result.to_dict()
    assert document["shots"] == len(shot_spans(document["batches"])) == 3


def test_an_output_path_ending_in_a_slash_is_refused_before_any_work(tmp_path):
    from videocaption.outputs.files import check_output_path

    with pytest.raises(OutputError, match="is a directory; give a file name"):
        check_output_path(f"{tmp_path}/not-yet/")
    check_output_path(f"{tmp_path}/not-yet/result.json")  # a file inside a folder still to be made is fine
