"""Adaptive sampling: shots from hard cuts, near-duplicates skipped, the max_gap floor, on real clips."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import bmf
import numpy as np
import pytest
from helpers import FAST, REPO_ROOT, ffmpeg, untimed

from videocaption.captioning.batching import FrameBatcher
from videocaption.captioning.checkpoint import Checkpoint, checkpoint_path
from videocaption.graph.build import module_options
from videocaption.graph.runner import run_caption_graph, wait_for_graph
from videocaption.options import CaptionOptions
from videocaption.sampling.grid import SampledFrame, select_expression
from videocaption.sampling.samplers import AdaptiveSampler, shot_spans
from videocaption.sampling.shots import changed_area, luma_thumbnail, scene_change

SIZE = "160x120"
# Four different lavfi sources joined: hard cuts at 4, 7 and 12 s (18 s in all).
SHOTS = [("testsrc2", 4), ("smptebars", 3), ("mandelbrot", 5), ("life=mold=10:ratio=0.1:life_color=#00ff00", 6)]
CUTS = [4.0, 7.0, 12.0]
ADAPTIVE = dict(FAST, max_new_tokens=4, sampling="adaptive")
RESULT_KEYS = {"batch_id", "frames", "description", "start_time", "end_time", "shot", "frames_skipped", "usage"}


def source(spec: str, seconds: float) -> list[str]:
    name, _, args = spec.partition("=")
    settings = f"size={SIZE}:rate=25" + (f":{args}" if args else "")
    return ["-f", "lavfi", "-i", f"{name}={settings},trim=duration={seconds}"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sampling")
    cuts, static, motion = folder / "cuts.mp4", folder / "static.mp4", folder / "motion.mp4"
    inputs = [arg for spec, seconds in SHOTS for arg in source(spec, seconds)]
    joined = "".join(f"[{i}]" for i in range(len(SHOTS))) + f"concat=n={len(SHOTS)}:v=1:a=0,format=yuv420p"
    ffmpeg(*inputs, "-filter_complex", joined, "-c:v", "libx264", "-preset", "veryfast", str(cuts))
    # A still picture with light temporal noise, compressed: what a slide or a static camera gives.
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"smptehdbars=size={SIZE}:rate=25:duration=60",
        "-vf",
        "noise=alls=10:allf=t,format=yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "26",
        str(static),
    )
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate=25:duration=10", "-pix_fmt", "yuv420p", str(motion))
    return {"cuts": cuts, "static": static, "motion": motion}


def caption(clip: Path, tmp_path: Path, **options) -> dict:
    values = {**ADAPTIVE, **options}
    return run_caption_graph(clip, CaptionOptions(**values, result_path=str(tmp_path / f"{clip.stem}.json"))).to_dict()


def duration(clip: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(clip)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


def assert_valid(result: dict, clip: Path) -> None:
    """The schema, and times that are sorted, inside the video and never overlapping."""
    batches = result["batches"]
    assert batches and all(set(b) == RESULT_KEYS for b in batches), batches
    assert [b["batch_id"] for b in batches] == list(range(1, len(batches) + 1))
    assert all(0 <= b["start_time"] <= b["end_time"] <= duration(clip) for b in batches)
    assert all(a["end_time"] < b["start_time"] for a, b in zip(batches, batches[1:]))
    assert [b["shot"] for b in batches] == sorted(b["shot"] for b in batches)
    assert result["frames_analysed"] == sum(b["frames"] for b in batches)
    assert result["frames_skipped"] == sum(b["frames_skipped"] for b in batches)
    assert result["sampling"] == "adaptive" and result["shots"] == batches[-1]["shot"] + 1
    assert result["summary"] and result["video_title"]


# -- the measures -------------------------------------------------------------------------


def test_thumbnails_ignore_noise_but_see_a_small_moving_subject():
    rng = np.random.default_rng(0)
    picture = np.kron(rng.integers(40, 200, size=(18, 32)), np.ones((40, 40))).astype(np.float32)
    noisy = lambda: np.clip(picture + rng.normal(0, 8, picture.shape), 0, 255).astype(np.uint8)  # noqa: E731
    a, b = luma_thumbnail(noisy()), luma_thumbnail(noisy())
    assert a.shape == (18, 32)
    # Pixel noise of 8 levels averages out: at most a stray cell, far below a near-duplicate's allowance.
    assert changed_area(a, b) < CaptionOptions.duplicate_threshold / 2 and scene_change(a, b) < 2
    moved = picture.copy()
    moved[300:420, 600:760] = 255 - moved[300:420, 600:760]  # a subject of 2% of the picture changes
    assert changed_area(a, luma_thumbnail(moved.astype(np.uint8))) > 0.01
    assert scene_change(a, luma_thumbnail(np.full((720, 1280), 10, np.uint8))) > 30  # a cut to black


def test_ten_bit_planes_are_scaled_to_eight_bits():
    eight = np.full((120, 160), 200, np.uint8)
    assert np.allclose(luma_thumbnail(eight), luma_thumbnail(eight.astype(np.uint16) * 4), atol=1.5)


def test_sampler_keeps_the_first_frame_after_a_cut_and_one_every_max_gap():
    sampler = AdaptiveSampler(fps=1.0, scene_threshold=30, duplicate_threshold=0.02, max_gap=5)
    grey, white = np.full((18, 32), 100, np.float32), np.full((18, 32), 250, np.float32)
    decisions = [sampler.decide(t / 5, lambda t=t: grey if t < 42 else white) for t in range(0, 75)]
    kept = [t / 5 for t, d in zip(range(75), decisions) if d.keep]
    # 0 s, then 5 s (max_gap) on the static shot; the cut at 8.4 s: the next sample (9 s) is kept
    # and starts shot 1; then 14 s (max_gap again).
    assert kept == [0.0, 5.0, 9.0, 14.0]
    assert [d.shot for d in decisions if d.keep] == [0, 0, 1, 1]
    assert [d.new_shot for d in decisions if d.keep] == [False, False, True, False]
    assert sum(d.skipped for d in decisions) == 15 - 4
    assert sampler.cut_times == [8.4]


def test_skipped_frames_stretch_a_held_full_batch():
    batcher = FrameBatcher(batch_size=2, hold_full=True)
    frame = lambda t: SampledFrame(image=None, timestamp=t)  # noqa: E731
    assert batcher.add(frame(0.0), shot=0) is None
    assert batcher.add(frame(1.0), shot=0) is None  # full, but held: duplicates may follow
    batcher.skip(2.0)
    batcher.skip(3.0)
    full = batcher.add(frame(4.0), shot=0)
    assert (full.start_time, full.end_time, full.frames_skipped, full.shot) == (0.0, 3.0, 2, 0)
    assert full.timestamps == [0.0, 1.0]  # the model is told the times of the frames it sees


# -- whole runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_every_batch_lies_within_one_shot_and_each_cut_starts_one(clips, tmp_path):
    result = caption(clips["cuts"], tmp_path)
    assert_valid(result, clips["cuts"])
    frame = 1 / 25
    for batch in result["batches"]:
        assert not any(batch["start_time"] < cut <= batch["end_time"] for cut in CUTS), batch
    starts = {b["shot"]: b["start_time"] for b in reversed(result["batches"])}  # each shot's first batch
    assert sorted(starts) == [0, 1, 2, 3]
    for shot, cut in enumerate(CUTS, start=1):
        assert cut - frame <= starts[shot] <= cut + 1 + frame, (shot, starts)
    spans = shot_spans(result["batches"])
    assert [shot for shot, _, _ in spans] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_static_shot_sends_a_frame_every_max_gap(clips, tmp_path):
    adaptive = caption(clips["static"], tmp_path, batch_size=8)
    uniform = caption(clips["static"], tmp_path, batch_size=8, sampling="uniform")
    assert uniform["frames_analysed"] == 60 and "frames_skipped" not in uniform
    assert adaptive["frames_analysed"] <= 7 < uniform["frames_analysed"]
    assert adaptive["frames_analysed"] + adaptive["frames_skipped"] == 60
    assert_valid(adaptive, clips["static"])
    assert adaptive["batches"][-1]["end_time"] >= 59.0  # the span still covers the skipped frames


def test_constant_motion_keeps_nearly_every_frame(clips, tmp_path):
    result = caption(clips["motion"], tmp_path)
    assert_valid(result, clips["motion"])
    assert result["frames_analysed"] >= 0.9 * 10 and result["shots"] == 1


def test_adaptive_runs_resume_to_the_uninterrupted_result(clips, tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(Checkpoint, "remove", lambda self: kept.append(self.path))  # keep every batch saved
    whole = caption(clips["cuts"], tmp_path, batch_size=2)
    saved = json.loads(kept[0].read_text())
    assert len(saved["batches"]) == len(whole["batches"]) >= 6
    saved["batches"] = saved["batches"][:3]  # as if stopped after three batches
    kept[0].write_text(json.dumps(saved))
    monkeypatch.undo()
    resumed = caption(clips["cuts"], tmp_path, batch_size=2, resume=True)
    assert not checkpoint_path(tmp_path / "cuts.json").exists()
    drop = ("video_title", "summary")
    batches = lambda r: [{k: v for k, v in b.items() if k != "description"} for b in untimed(r["batches"])]  # noqa: E731
    assert batches(resumed) == batches(whole)
    assert {k: v for k, v in untimed(resumed).items() if k not in drop + ("batches",)} == {
        k: v for k, v in untimed(whole).items() if k not in drop + ("batches",)
    }
    # The restored descriptions are the saved ones, word for word.
    assert [b["description"] for b in resumed["batches"][:3]] == [b["description"] for b in saved["batches"]]


def test_a_users_graph_that_samples_before_the_module_still_finds_the_cuts(clips, tmp_path):
    """The module sees only the 1 fps samples: cuts are found between samples."""
    options = CaptionOptions(**ADAPTIVE, result_path=str(tmp_path / "result.json"))
    graph = bmf.graph()
    video = graph.decode({"input_path": str(clips["cuts"])})["video"].ff_filter("select", select_expression(1.0))
    node = bmf.module(
        [video], "llm_caption", module_options(options), module_path=str(REPO_ROOT), entry="llm_caption.llm_caption"
    )
    wait_for_graph(graph, node)
    result = json.loads((tmp_path / "result.json").read_text())
    assert_valid(result, clips["cuts"])
    assert result["shots"] == 4
    for batch in result["batches"]:
        assert not any(batch["start_time"] < cut <= batch["end_time"] for cut in CUTS), batch


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    import tiny_vlms

    return str(tiny_vlms.build_llava(tmp_path_factory.mktemp("llava") / "llava"))


@pytest.mark.parametrize("backend", ["deepseek_vl2", "transformers"])
def test_the_captioner_samples_the_same_way_on_every_backend(backend, request):
    """Sampling happens before the model: the same shots and skips whatever describes the frames."""
    from PIL import Image

    from videocaption.captioning.captioner import Captioner

    model = request.getfixturevalue("tiny_llava") if backend == "transformers" else FAST["model"]
    options = CaptionOptions(
        backend=backend, model=model, device="cpu", max_new_tokens=4, batch_size=2, sampling="adaptive", max_gap=3
    )
    captioner = Captioner(options)
    # 0-4 s grey (static), 5-6 s white: a cut at 5 s. Frames every 0.5 s, sampled at 1 fps.
    for step in range(14):
        seconds = step / 2
        image = Image.new("RGB", (64, 48), (90, 90, 90) if seconds < 5 else (250, 250, 250))
        if captioner.wants(seconds, lambda image=image: luma_thumbnail(np.asarray(image.convert("L")))):
            captioner.add(image, seconds)
    result = captioner.finish()
    got = [(b.start_time, b.end_time, b.frames, b.frames_skipped, b.shot) for b in result.batches]
    # 0 s sent, 1-2 s skipped, 3 s sent (max_gap), 4 s skipped; 5 s starts shot 1, 6 s skipped.
    assert got == [(0.0, 4.0, 2, 3, 0), (5.0, 6.0, 1, 1, 1)]
    assert result.to_dict()["frames_skipped"] == 4 and result.to_dict()["shots"] == 2


def test_the_cli_prints_each_shots_span(capsys):
    from videocaption.cli.main import print_shots
    from videocaption.result import BatchCaption, CaptionResult

    def result(*batches: BatchCaption) -> CaptionResult:
        return CaptionResult("", "", 2, list(batches), "m", 1.0, 0.0)

    print_shots(
        result(
            BatchCaption(1, 2, 0.0, 3.0, "", shot=0, frames_skipped=2),
            BatchCaption(2, 1, 3.5, 3.9, "", shot=0, frames_skipped=1),
            BatchCaption(3, 2, 4.0, 6.0, "", shot=1),
        )
    )
    assert capsys.readouterr().out == "2 shots: 0:00.0-0:03.9, 0:04.0-0:06.0; 3 near-duplicate frames skipped\n"
    print_shots(result(BatchCaption(1, 4, 0.0, 3.0, "")))  # uniform: nothing
    assert capsys.readouterr().out == ""
