"""Issue 24 end to end: a library captioned through ``--backend openai`` against a scripted server,
then searched and asked; and a phrase only spoken, found at its time.

The server (tests/fake_openai.py, a real loopback HTTP server) describes each clip by its colour
and each batch by its first frame's time, so the test knows which moment holds which words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, ScriptedCaptions
from helpers import ffmpeg

from videocaption.cli.main import main
from videocaption.options import CaptionOptions

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
MOMENTS = {  # (clip, first frame second) -> what the scripted model says it shows
    ("red", 0.0): "A red curtain hangs still.",
    ("red", 2.0): "A hot air balloon drifts over the harbour at dawn.",
    ("green", 0.0): "A tractor ploughs a green field.",
    ("green", 2.0): "Sheep graze beside a stone wall.",
    ("blue", 0.0): "A swimmer dives into a blue pool.",
    ("blue", 2.0): "Waves break on a rocky shore.",
}


def describe(colour: tuple[int, int, int], seconds: float) -> str:
    clip = ("red", "green", "blue")[max(range(3), key=lambda channel: colour[channel])]
    return MOMENTS.get((clip, 2.0 if seconds >= 2.0 else 0.0), "Nothing happens.")


def colour_clip(path: Path, colour: str, duration: float = 4.0) -> Path:
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"color=c={colour}:size=160x120:rate=5:duration={duration}",
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    return path


def server_flags(server: FakeOpenAI) -> list[str]:
    return ["--backend", "openai", "--api-base", server.url, "--model", "scripted", "--max-retries", "0"]


@pytest.mark.slow
def test_a_captioned_library_is_searched_and_asked_with_citations(tmp_path: Path, capsys) -> None:
    import ray

    from videocaption.library.ray_runner import LibraryConfig, run_library

    library = tmp_path / "videos"
    library.mkdir()
    for colour in COLOURS:
        colour_clip(library / f"{colour}.mp4", colour)
    output = tmp_path / "captions"
    script = ScriptedCaptions(describe=describe, answer_with="balloon", summary_cites=(2, 99))
    with FakeOpenAI(chat=script) as server:
        options = CaptionOptions(
            backend="openai", api_base=server.url, model="scripted", fps=1.0, batch_size=2, max_retries=0
        )
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        try:
            config = LibraryConfig(
                inputs=(str(library),), output_dir=output, manifest_path=output / "manifest.parquet", workers=1
            )
            run = run_library(config, options)
        finally:
            ray.shutdown()
        assert [row.status for row in run.rows] == ["ok"] * 3, [row.error for row in run.rows]
        assert (output / "segments.parquet").is_file()

        # Search, through the manifest (it finds segments.parquet beside it).
        assert (
            main(["--search", "balloon over the harbour", "--index", str(output / "manifest.parquet"), "--json"]) == 0
        )
        [best, *rest] = json.loads(capsys.readouterr().out)["hits"]
        assert (Path(best["video"]).name, best["start"], best["end"]) == ("red.mp4", 2.0, 3.0)
        assert all("balloon" not in hit["description"] for hit in rest)

        # Ask, with the same server as the model.
        question = ["--ask", "Where is the hot air balloon?", "--index", str(output), "--json"]
        assert main([*question, *server_flags(server)]) == 0
        answer = json.loads(capsys.readouterr().out)
    assert answer["supported"] is True
    assert [(Path(c["video"]).name, c["start"], c["end"], c["batch_id"]) for c in answer["citations"]] == [
        ("red.mp4", 2.0, 3.0, 2)
    ]
    # The grounded summary of each video: [2] is its second batch, [99] names nothing and is dropped.
    document = json.loads((output / str(library / "red.mp4").lstrip("/") / "result.json").read_text())
    assert document["summary"] == "The video shows colours. It ends."
    assert document["summary_evidence"] == [
        {"text": "The video shows colours.", "batches": [2], "start": 2.0, "end": 3.0},
        {"text": "It ends.", "batches": [], "start": None, "end": None},
    ]
    assert document["summary_citations_dropped"] == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_phrase_only_spoken_is_found_at_its_time(tmp_path: Path, capsys) -> None:
    from test_transcribe import speech_clip

    clip = tmp_path / "talk.mp4"
    [(spoken_start, spoken_end)] = speech_clip(clip, {6.0: "The secret word is marmalade."}, 10.0, video=["rate=5"])
    script = ScriptedCaptions(describe=lambda colour, seconds: "A test pattern with moving colours.")
    transcription = lambda request: (200, "application/json", b'{"text": "the secret word is marmalade"}')  # noqa: E731
    segments = tmp_path / "talk.parquet"
    with FakeOpenAI(chat=script, transcription=transcription) as server:
        arguments = [str(clip), "--output", str(tmp_path / "talk.json"), "--segments", str(segments)]
        arguments += ["--fps", "1", "--batch-size", "2", "--transcribe", "--asr-backend", "openai"]
        arguments += ["--asr-model", "whisper", *server_flags(server)]
        assert main(arguments) == 0
    capsys.readouterr()
    assert main(["--search", "marmalade", "--index", str(segments), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and all("marmalade" in (hit["speech"] or "") for hit in hits)
    assert all("marmalade" not in hit["description"] for hit in hits)  # only spoken
    # The moments found are where the sentence was placed: a batch covers 2 s (2 frames at 1 fps),
    # so the one the speech starts in is found, and none before the batch ahead of it (the speech
    # detector's padding may give the preceding batch the start of it) nor after it ends.
    spans = [(hit["start"], hit["end"]) for hit in hits]
    assert any(start <= spoken_start < start + 2.0 for start, _ in spans), (spans, spoken_start)
    assert all(spoken_start - 2.5 <= start < spoken_end for start, _ in spans), (spans, spoken_start)
