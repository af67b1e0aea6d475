"""The module inside users' graphs: the README examples, pass-through to an encoder, EOF, reset."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import bmf
import pytest
from helpers import FAST, REPO_ROOT, SAMPLE_CLIP, untimed

from videocaption.captioning.checkpoint import checkpoint_path
from videocaption.captioning.progress import Progress
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def frame_times(path: Path) -> list[str]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split(",")[0] for line in out.split()]


def stream_types(path: Path) -> list[str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(out.split())


@pytest.mark.slow
def test_example_demo_graph(tmp_path):
    run_example("demo_graph.py", str(SAMPLE_CLIP), FAST["model"], "8", cwd=tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["frames_analysed"] == 6 and result["video_title"]


@pytest.mark.slow
def test_example_pass_through_to_encoder_keeps_every_frame_and_the_audio(tmp_path):
    output = tmp_path / "out.mp4"
    run_example("caption_and_encode.py", str(SAMPLE_CLIP), str(output), FAST["model"], "8", cwd=tmp_path)
    assert frame_times(output) == frame_times(SAMPLE_CLIP)  # 132 frames, same timestamps
    assert stream_types(output) == ["audio", "video"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["frames_analysed"] == 6  # sampled by timestamp at 1 fps out of 25 fps
    assert [b["start_time"] for b in result["batches"]] == [0.0, 4.0]


@pytest.mark.slow
def test_example_caption_packet_consumer(tmp_path):
    done = run_example("read_caption_packets.py", str(SAMPLE_CLIP), FAST["model"], "8", cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("[ ", "Title:", "Summary:"))]
    assert [line.split("]")[0] for line in lines[:2]] == ["[   0.0s -    2.0s", "[   3.0s -    5.0s"]
    assert lines[2].startswith("Title: ") and lines[3].startswith("Summary: ")


@pytest.mark.slow
def test_the_module_runs_twice_in_one_process(tmp_path):
    first = run_caption_graph(SAMPLE_CLIP, CaptionOptions(**FAST, result_path=str(tmp_path / "1.json"))).to_dict()
    second = run_caption_graph(SAMPLE_CLIP, CaptionOptions(**FAST, result_path=str(tmp_path / "2.json"))).to_dict()
    assert untimed(first["batches"]) == untimed(second["batches"])  # greedy decoding: the same text twice
    assert first["summary"] == second["summary"]


def test_progress_reaches_the_caller_of_the_run(tmp_path):
    """run_caption_graph's callback gets the module's reports (BMF builds the module: see videocaption.graph.context)."""
    reports: list[Progress] = []
    run_caption_graph(
        SAMPLE_CLIP, CaptionOptions(**FAST, result_path=str(tmp_path / "r.json")), on_progress=reports.append
    )
    assert reports[-1] == Progress(frames_sampled=6, batches_done=2, stage="done")
    sampled = [report.frames_sampled for report in reports]
    assert sampled == sorted(sampled) and sampled[0] == 1
    assert [r.stage for r in reports if r.stage != "describing"] == ["summarizing", "titling", "done"]


def test_a_graph_stopped_early_does_not_hang_and_keeps_its_batches_in_the_checkpoint_only(tmp_path):
    result_path = tmp_path / "result.json"
    options = CaptionOptions(**FAST, batch_size=1, result_path=str(result_path))
    # A user's graph: every decoded frame reaches the module, which samples by timestamp. (BMF
    # 0.2.0's force_close can crash when an ff_filter node is mid-frame, as in the demo graph:
    # the demo CLI never force-closes a running graph.)
    graph = bmf.graph()
    frames = graph.decode({"input_path": str(SAMPLE_CLIP)})["video"]
    node = bmf.module(
        [frames],
        "llm_caption",
        dataclasses.asdict(options),
        module_path=str(REPO_ROOT),
        entry="llm_caption.llm_caption",
    )
    graph.run(node, is_blocked=False)
    deadline = time.monotonic() + 120
    while not checkpoint_path(result_path).exists():  # the first batch is described
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    graph.force_close()
    assert time.monotonic() - started < 30
    # No result for a run that did not reach the end; what was described is in the checkpoint.
    assert not result_path.exists()
    kept = json.loads(checkpoint_path(result_path).read_text())["batches"]
    assert 1 <= len(kept) < 6
    assert [b["batch_id"] for b in kept] == list(range(1, len(kept) + 1))
