"""Live runs share the file runs' captioning core (videocaption/captioning/captioner.py): speech
(``--transcribe``), adaptive sampling and the split retry of a failed batch work on a live
stream as they do on a file.

The streams are MPEG-TS files that ffmpeg serves in real time to one TCP client on loopback,
so their stream times are the file's times.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLI, FAST, FAST_FLAGS, ffmpeg
from PIL import Image
from test_live import free_port, records, stopped_afterwards
from test_transcribe import speech_clip
from tiny_whisper import build_tiny_whisper

from videocaption.backends import load_model
from videocaption.live.captioner import LiveCaptioner, LiveRun
from videocaption.live.stream import AudioTrack, LatestFrames, LiveFrame
from videocaption.options import CaptionOptions
from videocaption.sampling.samplers import Decision

STARTUP_S = 60  # the CLI's model loads on a loaded machine
# Between a placed and a detected segment edge: as on a file (test_transcribe), plus the AAC
# encoder's priming and MPEG-TS's audio/video start offset (a few tens of ms).
SPEECH_TOLERANCE = 0.35


def serve_file(path: Path, port: int) -> subprocess.Popen:
    """ffmpeg serving ``path`` in real time as MPEG-TS to one TCP client on loopback."""
    server = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-i",
            str(path),
            "-c",
            "copy",
            "-f",
            "mpegts",
            f"tcp://127.0.0.1:{port}?listen=1",
        ],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not listening(port):  # a probe connection would take the one client's place: look instead
        assert server.poll() is None and time.monotonic() < deadline, "ffmpeg is not listening"
        time.sleep(0.05)
    return server


def listening(port: int) -> bool:
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(int(fields[1].split(":")[1], 16) == port and fields[3] == "0A" for fields in map(str.split, lines))


# -- the parts -------------------------------------------------------------------------------


def kept(second: float, *, new_shot: bool = False) -> LiveFrame:
    return LiveFrame(
        image=None, stream_time=second, arrived=0.0, decision=Decision(keep=True, shot=int(new_shot), new_shot=new_shot)
    )


def skipped(second: float) -> LiveFrame:
    return LiveFrame(image=None, stream_time=second, arrived=0.0, decision=Decision(keep=False, shot=0, skipped=True))


def test_skipped_near_duplicates_wait_in_order_without_taking_room():
    frames = LatestFrames(capacity=2)
    for frame in (kept(0), skipped(1), skipped(2), kept(3)):
        frames.put(frame)
    assert len(frames) == 2 and frames.dropped == 0
    assert [f.stream_time for f in frames.take(1)] == [0]
    assert [f.stream_time for f in frames.take(1)] == [1, 2, 3]


def test_a_dropped_frame_takes_its_duplicates_and_hands_its_cut_on():
    frames = LatestFrames(capacity=2)
    for frame in (kept(0, new_shot=True), skipped(1), kept(2), kept(3)):
        frames.put(frame)
    assert frames.dropped == 1
    first, second = frames.take(2)
    assert (first.stream_time, first.decision.new_shot) == (2, True)  # the next frame starts the shot
    assert (second.stream_time, second.decision.new_shot) == (3, False)


def test_the_audio_track_fills_gaps_with_silence_and_cuts_what_was_heard_twice():
    track = AudioTrack()
    second = np.ones(16000, dtype=np.float32)
    assert [(len(s), t) for s, t in track.pieces(second, 0.0)] == [(16000, 0.0)]
    assert [(len(s), t) for s, t in track.pieces(second, 1.01)] == [(16000, 1.01)]  # jitter: as it is
    pieces = list(track.pieces(second, 4.01))  # a reconnection 2 s later
    assert [(len(s), t) for s, t in pieces] == [(32000, 2.01), (16000, 4.01)] and not pieces[0][0].any()
    assert [(len(s), round(t, 6)) for s, t in track.pieces(second, 4.51)] == [(8000, 5.01)]  # half heard before
    assert track.end == pytest.approx(5.51)


@pytest.fixture(scope="module")
def model():
    return load_model(CaptionOptions(**FAST))


# -- speech ------------------------------------------------------------------------------------

SENTENCES = {
    1.0: "Hello, this is the first sentence of the test.",
    5.5: "And here the second speaker talks about the weather.",
}
SPEECH_DURATION = 10.0


@pytest.fixture(scope="module")
def speech_stream(tmp_path_factory) -> tuple[Path, list[tuple[float, float]]]:
    """A 10 s MPEG-TS file (H.264, 44.1 kHz stereo AAC) with espeak-ng sentences at 1 s and 5.5 s;
    returns it and the spans where speech was placed."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    stream = tmp_path_factory.mktemp("live-speech") / "speech.ts"
    video = ["rate=25", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25"]
    placed = speech_clip(stream, SENTENCES, SPEECH_DURATION, video=video, container=["-f", "mpegts"])
    return stream, placed


@pytest.mark.slow
def test_live_transcribe_hears_the_speech_at_its_stream_times(speech_stream, tmp_path):
    stream, placed = speech_stream
    whisper = build_tiny_whisper(tmp_path / "tiny-whisper")
    port = free_port()
    server = serve_file(stream, port)
    cli = subprocess.Popen(
        [
            *CLI,
            f"tcp://127.0.0.1:{port}",
            "--output",
            str(tmp_path / "result.json"),
            "--jsonl",
            str(tmp_path / "live.jsonl"),
            "--transcribe",
            "--asr-model",
            str(whisper),
            "--fps",
            "1",
            "--batch-size",
            "2",
            "--max-pending-frames",
            "20",
            "--reconnect",
            "0",
            "--srt",
            "--subtitles",
            "both",
            *FAST_FLAGS,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with stopped_afterwards(server, cli):
        out, err = cli.communicate(timeout=STARTUP_S + 60)
    assert cli.returncode == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["live"]["ended_by"] == "the stream ended" and result["live"]["dropped_frames"] == 0
    transcript = result["transcript"]
    assert len(transcript) == len(placed), transcript
    for segment, (start, end) in zip(transcript, placed):
        assert segment["start"] == pytest.approx(start, abs=SPEECH_TOLERANCE)
        assert segment["end"] == pytest.approx(end, abs=SPEECH_TOLERANCE)
        assert segment["text"]
    # Each batch's speech is what is said during its span [first frame, last frame + 1 s).
    batches = [r for r in records(tmp_path) if r["type"] == "batch"]
    assert [b["batch_id"] for b in batches] == [b["batch_id"] for b in result["batches"]]
    heard_batches = 0
    for batch in result["batches"]:
        span = (batch["start_time"], batch["end_time"] + 1.0)
        heard = [s["text"] for s in transcript if s["start"] < span[1] and s["end"] > span[0]]
        assert batch["speech"] == " ".join(heard), (batch, transcript)
        heard_batches += bool(heard)
    assert heard_batches >= 2  # both sentences reached their batches
    assert all("speech" in b for b in batches)
    srt = (tmp_path / "result.srt").read_text()
    assert all(segment["text"].split()[0] in srt for segment in transcript)


@pytest.mark.slow
def test_live_transcribe_on_a_stream_without_audio_captions_the_frames(model, tmp_path, caplog):
    """The audio output ends at once: batches are not held waiting for audio that never comes."""
    from test_live import serve

    caplog.set_level("INFO", logger="llm_caption")
    options = CaptionOptions(
        **FAST,
        transcribe=True,
        asr_model=str(build_tiny_whisper(tmp_path / "whisper")),
        fps=1,
        batch_size=2,
        max_pending_frames=20,
        reconnect=0,
        result_path=str(tmp_path / "result.json"),
    )
    port = free_port()
    server = serve(port, seconds=5)
    deadline = time.monotonic() + 30
    while not listening(port):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with stopped_afterwards(server):
        result = LiveCaptioner(f"tcp://127.0.0.1:{port}", options, model=model).caption()
    assert result.transcript == [] and result.batches and all(b.speech == "" for b in result.batches)
    assert [r.message for r in caplog.records if "no audio" in r.message] == [
        "transcribe: no audio stream; captioning the frames only"
    ]


# -- adaptive sampling -------------------------------------------------------------------------

# Three lavfi sources joined: hard cuts at 3 and 6 s (9 s in all); the bars are a still picture.
SHOTS = [("testsrc2", 3), ("smptebars", 3), ("mandelbrot", 3)]
CUTS = [3.0, 6.0]


@pytest.fixture(scope="module")
def cuts_stream(tmp_path_factory) -> Path:
    stream = tmp_path_factory.mktemp("live-cuts") / "cuts.ts"
    inputs = [
        arg
        for name, seconds in SHOTS
        for arg in ("-f", "lavfi", "-i", f"{name}=size=160x120:rate=25,trim=duration={seconds}")
    ]
    joined = "".join(f"[{i}]" for i in range(len(SHOTS))) + f"concat=n={len(SHOTS)}:v=1:a=0,format=yuv420p"
    ffmpeg(
        *inputs,
        "-filter_complex",
        joined,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-f",
        "mpegts",
        str(stream),
    )
    return stream


@pytest.mark.slow
def test_live_adaptive_sampling_ends_batches_at_cuts(cuts_stream, model, tmp_path):
    options = CaptionOptions(
        **FAST,
        sampling="adaptive",
        fps=2,
        batch_size=4,
        max_pending_frames=40,
        reconnect=0,
        result_path=str(tmp_path / "result.json"),
        jsonl_path=str(tmp_path / "live.jsonl"),
    )
    port = free_port()
    server = serve_file(cuts_stream, port)
    with stopped_afterwards(server):
        result = LiveCaptioner(f"tcp://127.0.0.1:{port}", options, model=model).caption()
    written = json.loads((tmp_path / "result.json").read_text())
    batches = written["batches"]
    assert written["sampling"] == "adaptive" and written["shots"] == len(SHOTS) == result.shots
    assert all({"shot", "frames_skipped"} <= set(b) for b in batches)
    assert [b["shot"] for b in batches] == sorted(b["shot"] for b in batches)
    assert {b["shot"] for b in batches} == set(range(len(SHOTS)))
    for cut in CUTS:  # no batch spans a cut: one ends before it, the next starts at it, in a new shot
        assert not any(b["start_time"] < cut - 0.1 and b["end_time"] >= cut + 0.1 for b in batches), batches
        (after,) = [n for n, b in enumerate(batches) if abs(b["start_time"] - cut) < 0.1]
        assert batches[after]["shot"] == batches[after - 1]["shot"] + 1
    assert written["frames_skipped"] == sum(b["frames_skipped"] for b in batches) > 0  # the still bars
    assert written["live"]["dropped_frames"] == 0
    lines = [r for r in records(tmp_path) if r["type"] == "batch"]
    assert [(r["shot"], r["frames_skipped"]) for r in lines] == [(b["shot"], b["frames_skipped"]) for b in batches]


# -- the split retry ---------------------------------------------------------------------------


def test_a_live_batch_that_fails_whole_is_retried_split_in_two(model, monkeypatch, tmp_path):
    """Out of memory on four frames, fine on two: the live run describes the batch in two halves,
    as a file run does (tests/test_model_failures.py)."""
    calls: list[list[int]] = []
    real = model.describe_batch

    def describe_batch(requests, **kwargs):
        calls.append([len(images) for images, _ in requests])
        if any(len(images) > 2 for images, _ in requests):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(requests, **kwargs)

    monkeypatch.setattr(model, "describe_batch", describe_batch)
    options = CaptionOptions(
        **FAST, batch_size=4, result_path=str(tmp_path / "result.json"), jsonl_path=str(tmp_path / "live.jsonl")
    )
    frames = LatestFrames(capacity=8)
    run = LiveRun("test://frames", options, frames, model)
    for second in range(8):
        frames.put(
            LiveFrame(
                image=Image.new("RGB", (64, 48), (second * 30, 90, 60)), stream_time=float(second), arrived=time.time()
            )
        )
    frames.close(drain=True)
    run.start()
    run.join()
    assert run.failure is None
    result = run.finish("the test ended")
    assert calls[:4] == [[4], [2, 2], [4], [2, 2]]
    assert [(b.frames, b.error) for b in result.batches] == [(4, None), (4, None)]
    assert all(b.description for b in result.batches)
    assert [r["error"] if "error" in r else None for r in records(tmp_path) if r["type"] == "batch"] == [None, None]


# -- the HTML report ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_live_run_rewrites_its_report_as_batches_arrive(cuts_stream, model, tmp_path, monkeypatch):
    """Each described batch rewrites the report, marked in progress; the end writes it whole."""
    from videocaption.live import captioner as live_module

    rewrites = []
    write_outputs = live_module.write_outputs

    def watched(result, options, **files):
        written = write_outputs(result, options, **files)
        page = (tmp_path / "r.html").read_text(encoding="utf-8")
        rewrites.append((files.get("partial", False), len(result.batches), "In progress" in page))
        return written

    monkeypatch.setattr(live_module, "write_outputs", watched)
    options = CaptionOptions(
        **FAST,
        fps=1,
        batch_size=2,
        max_pending_frames=40,
        reconnect=0,
        report_images="folder",
        result_path=str(tmp_path / "r.json"),
        report_path=str(tmp_path / "r.html"),
    )
    port = free_port()
    with stopped_afterwards(serve_file(cuts_stream, port)):
        result = LiveCaptioner(f"tcp://127.0.0.1:{port}", options, model=model).caption()
    partial, final = rewrites[:-1], rewrites[-1]
    assert [count for _, count, _ in partial] == list(range(1, len(result.batches) + 1))
    assert all(is_partial and in_progress for is_partial, _, in_progress in partial)
    assert final == (False, len(result.batches), False)
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(re.findall(r"<img ", html)) == result.frames_analysed
    assert len(list((tmp_path / "r_files").glob("*.jpg"))) == result.frames_analysed
