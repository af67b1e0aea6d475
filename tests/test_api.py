"""The Python API: ``caption_video`` returns the result, writes only what it is asked to, probes once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, REPO_ROOT, SAMPLE_CLIP, run_cli, untimed

from videocaption import (
    BatchCaption,
    CaptionError,
    CaptionOptions,
    CaptionResult,
    InvalidOptionError,
    MediaInfo,
    OutputError,
    VideoInputError,
    caption_video,
)
from videocaption.media import probe

# ffprobe runs per input: one for the streams and the container, one for the video packets
# (the keyframe interval and where the video ends). Before the one MediaInfo it was 3 for a
# plain CLI run (4 with --transcribe).
FFPROBE_RUNS_PER_INPUT = 2


def test_importing_the_package_loads_neither_bmf_nor_torch():
    code = (
        "import sys, videocaption; "
        "print(sorted(m for m in ('bmf', 'torch', 'transformers', 'PIL') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory) -> tuple[CaptionResult, Path, int]:
    """caption_video with keyword options only, in an empty working directory: (result, directory,
    ffprobe runs)."""
    folder = tmp_path_factory.mktemp("api")
    runs = []
    original = probe._ffprobe

    def counting(*args, **kwargs):
        runs.append(args)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(probe, "_ffprobe", counting)
        result = caption_video(SAMPLE_CLIP, **FAST)
    return result, folder, len(runs)


@pytest.mark.slow
def test_caption_video_returns_the_result_and_writes_nothing(in_memory):
    result, folder, _ = in_memory
    assert isinstance(result, CaptionResult) and result.complete
    assert all(isinstance(batch, BatchCaption) for batch in result.batches)
    assert [(b.start_time, b.end_time, b.frames) for b in result.batches] == [(0.0, 3.0, 4), (4.0, 5.0, 2)]
    assert result.video_title and result.summary and result.usage is not None
    assert result.video_end == pytest.approx(5.28)  # from the probe: the last subtitle cue ends there
    assert list(folder.iterdir()) == []  # no result.json, no checkpoint, no subtitles


def test_caption_video_probes_its_input_once(in_memory):
    assert in_memory[2] == FFPROBE_RUNS_PER_INPUT


@pytest.mark.slow
def test_the_result_is_what_the_cli_writes_for_the_same_options(in_memory, tmp_path):
    """to_dict() is the result.json document; and one CLI run spawns ffprobe only for its one probe."""
    log = tmp_path / "ffprobe.log"
    wrapper = tmp_path / "bin" / "ffprobe"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {probe.shutil.which("ffprobe")} "$@"\n')
    wrapper.chmod(0o755)
    done = run_cli(str(SAMPLE_CLIP), cwd=tmp_path, env={"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "result.json").read_text())
    assert untimed(in_memory[0].to_dict()) == untimed(written)
    assert len(log.read_text().splitlines()) == FFPROBE_RUNS_PER_INPUT


def test_options_and_keywords_give_the_same_run_and_files_only_when_named(in_memory, tmp_path):
    result_path, srt_path = tmp_path / "out" / "result.json", tmp_path / "captions.srt"
    options = CaptionOptions(**{**FAST, "model": "not used: the keyword wins"})
    result = caption_video(
        SAMPLE_CLIP, options=options, model=FAST["model"], result_path=str(result_path), srt_path=str(srt_path)
    )
    assert untimed(result.to_dict()) == untimed(in_memory[0].to_dict())
    assert json.loads(result_path.read_text()) == result.to_dict()  # the document written is the one returned
    assert srt_path.read_text().startswith("1\n00:00:00,000 --> ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["captions.srt", "out", "result.json"]  # no checkpoint left


def test_an_unknown_keyword_is_a_clear_error():
    with pytest.raises(InvalidOptionError, match=r"unknown option 'batchsize'; known options: .*batch_size"):
        caption_video(SAMPLE_CLIP, batchsize=4)
    with pytest.raises(InvalidOptionError, match="batch_size must be at least 1"):
        caption_video(SAMPLE_CLIP, batch_size=0)


def test_resume_needs_a_result_file_and_live_streams_are_refused():
    with pytest.raises(InvalidOptionError, match="resume needs result_path"):
        caption_video(SAMPLE_CLIP, resume=True)
    with pytest.raises(InvalidOptionError, match="live mode"):
        caption_video("rtsp://127.0.0.1:9/stream")


def test_bad_inputs_and_outputs_fail_before_any_model_is_loaded(tmp_path, monkeypatch):
    import videocaption.graph.runner as runner

    monkeypatch.setattr(runner, "build_caption_graph", lambda *args: pytest.fail("no graph for a bad input"))
    with pytest.raises(VideoInputError, match="no such file"):
        caption_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(VideoInputError, match="not a video file"):
        caption_video(tmp_path / "notes.mp4")
    with pytest.raises(OutputError, match="is the input video"):
        caption_video(SAMPLE_CLIP, result_path=str(SAMPLE_CLIP))
    assert issubclass(OutputError, CaptionError)


def test_a_given_probe_is_used_as_it_is(monkeypatch):
    """The caller's MediaInfo goes on to the graph (its end caps the subtitles): no second probe."""
    import videocaption.graph.runner as runner

    class BuiltError(Exception):
        pass

    def build(video, options, run_id, media):
        raise BuiltError(media, options.video_end)

    monkeypatch.setattr(probe, "_ffprobe", lambda *args: pytest.fail("probed again"))
    monkeypatch.setattr(runner, "build_caption_graph", build)
    media = MediaInfo(duration=5.3, video_end=5.28, frame_rate=25.0)
    with pytest.raises(BuiltError) as built:
        caption_video(SAMPLE_CLIP, media=media, **FAST)
    assert built.value.args == (media, 5.28)
