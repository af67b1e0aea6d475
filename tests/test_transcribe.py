"""Speech found, transcribed and merged into the captions (issue 15).

Speech is synthesised with espeak-ng and placed at known offsets under a generated video, with
silence between; the recogniser is a tiny random-weight Whisper built offline, so its text is
noise: what is checked is where speech was found, that each segment's text reaches the prompt
of the batch whose span holds it, and that bad or missing audio never stops the captions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, ffmpeg
from tiny_whisper import build_tiny_whisper

from videocaption.audio.samples import to_mono_16k
from videocaption.audio.vad import SpeechDetector
from videocaption.deepseek_vl2 import DeepseekVL2
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions
from videocaption.outputs.writers import WriteSRT
from videocaption.result import CaptionResult

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SENTENCES = {
    2.0: "Hello, this is the first sentence of the test.",
    8.0: "And here the second speaker talks about the weather.",
}
DURATION = 12.0
TOLERANCE = 0.3  # seconds between a placed and a detected segment edge


def speech_extent(wav: Path) -> tuple[float, float]:
    """Where espeak's own file has sound (it starts and ends with a little silence)."""
    with wave.open(str(wav)) as file:
        rate = file.getframerate()
        samples = np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16)
    loud = np.flatnonzero(np.abs(samples) > 0.02 * 32768)
    return loud[0] / rate, (loud[-1] + 1) / rate


def speech_clip(
    path: Path, sentences: dict[float, str], duration: float, *, video: list[str], container: list[str] = ()
) -> list[tuple[float, float]]:
    """Write a clip of ``duration`` s (testsrc2 video, 44.1 kHz stereo AAC) with each espeak-ng
    sentence placed at its offset; returns the spans where speech was placed.

    Args:
        video: the video's lavfi options and codec flags (frame rate, encoder).
        container: flags before the output path (``-f mpegts``).
    """
    inputs, filters, placed = [], [], []
    for index, (offset, sentence) in enumerate(sentences.items()):
        wav = path.with_name(f"{path.stem}-s{index}.wav")
        subprocess.run(["espeak-ng", "-w", str(wav), sentence], check=True)
        start, end = speech_extent(wav)
        placed.append((offset + start, offset + end))
        inputs += ["-i", str(wav)]
        delay = round(offset * 1000)
        filters.append(f"[{index + 1}:a]adelay={delay}|{delay},apad[a{index}]")
    labels = "".join(f"[a{index}]" for index in range(len(sentences)))
    mix = (
        ";".join(filters)
        + f";{labels}amix=inputs={len(sentences)}:normalize=0:duration=longest,atrim=0:{duration}[mix]"
    )
    source, *codec = video
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size=160x120:{source}:duration={duration}", *inputs,
        "-filter_complex", mix, "-map", "0:v", "-map", "[mix]", "-ac", "2", "-ar", "44100", *codec,
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", str(duration), *container, str(path),
    )  # fmt: skip
    return placed


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, list[tuple[float, float]]]:
    """A 12 s clip (44.1 kHz stereo AAC) with two sentences at 2 s and 8 s; returns the clip and the
    spans where speech was placed."""
    clip = tmp_path_factory.mktemp("speech") / "speech.mp4"
    return clip, speech_clip(clip, SENTENCES, DURATION, video=["rate=5"])


@pytest.fixture(scope="module")
def whisper(tmp_path_factory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


@pytest.fixture
def prompts(monkeypatch) -> list[str]:
    """The batch prompts the model receives, in the order it receives them."""
    seen: list[str] = []
    original = DeepseekVL2.describe_batch

    def recording(self, requests, **kwargs):
        seen.extend(prompt for _, prompt in requests)
        return original(self, requests, **kwargs)

    monkeypatch.setattr(DeepseekVL2, "describe_batch", recording)
    return seen


def caption(clip: Path, tmp_path: Path, whisper: Path, **options) -> dict:
    options = CaptionOptions(
        **FAST,
        batch_size=2,
        transcribe=True,
        asr_model=str(whisper),
        result_path=str(tmp_path / "result.json"),
        **options,
    )
    return run_caption_graph(clip, options).to_dict()


@pytest.mark.slow
def test_speech_is_found_where_it_was_placed_and_reaches_its_batches(speech, whisper, prompts, tmp_path):
    clip, placed = speech
    result = caption(clip, tmp_path, whisper, srt_path=str(tmp_path / "speech.srt"), subtitles="both")
    transcript = result["transcript"]
    assert len(transcript) == len(placed), transcript
    for segment, (start, end) in zip(transcript, placed):
        assert segment["start"] == pytest.approx(start, abs=TOLERANCE)
        assert segment["end"] == pytest.approx(end, abs=TOLERANCE)
        assert segment["text"] and segment["start"] < segment["end"]
    # Each segment's text is in the prompt of every batch whose span [first frame, last + 1 s) it overlaps.
    assert len(prompts) == len(result["batches"]) == 6
    checked = 0
    for batch, prompt in zip(result["batches"], prompts):
        span = (batch["start_time"], batch["end_time"] + 1.0)
        heard = [s["text"] for s in transcript if s["start"] < span[1] and s["end"] > span[0]]
        assert batch["speech"] == " ".join(heard)
        if heard:
            assert f'Speech during these frames: "{" ".join(" ".join(heard).split())}"' in prompt
            checked += 1
        else:
            assert "Speech during" not in prompt
    assert checked >= 2  # the check above ran on batches with speech
    srt = (tmp_path / "speech.srt").read_text()
    assert all(segment["text"].split()[0] in srt for segment in transcript)


def test_seeking_to_sparse_samples_still_hears_all_the_speech(speech, whisper, tmp_path):
    """A seeking decoder reads only spans of the video; the audio comes whole from a second one."""
    clip, placed = speech
    result = caption(clip, tmp_path, whisper, fps=0.25, decode_skip="seek")
    assert [b["frames"] for b in result["batches"]] == [2, 1]  # samples at 0, 4 and 8 s
    assert len(result["transcript"]) == len(placed)
    for segment, (start, end) in zip(result["transcript"], placed):
        assert segment["start"] == pytest.approx(start, abs=TOLERANCE)
        assert segment["end"] == pytest.approx(end, abs=TOLERANCE)


def test_silence_gives_no_segments(whisper, prompts, tmp_path):
    clip = tmp_path / "silent.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=5:duration=4",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=48000:cl=stereo",
        "-shortest",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(clip),
    )
    result = caption(clip, tmp_path, whisper)
    assert result["transcript"] == []
    assert [batch["speech"] for batch in result["batches"]] == ["", ""]
    assert not any("Speech during" in prompt for prompt in prompts)


def test_a_video_without_audio_runs_as_before(small_clip, whisper, tmp_path, caplog):
    caplog.set_level("INFO", logger="llm_caption")
    result = caption(small_clip, tmp_path, whisper)
    assert result["frames_analysed"] == 2 and result["transcript"] == []
    assert [r.message for r in caplog.records if "no audio" in r.message] == [
        "transcribe: no audio stream; captioning the frames only"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "audio", [["-ac", "6", "-ar", "48000"], ["-ac", "1", "-ar", "11025"]], ids=["6-channels", "11025-Hz"]
)
def test_unusual_audio_layouts_are_heard(speech, whisper, tmp_path, audio):
    clip, placed = speech
    other = tmp_path / "other.mkv"
    ffmpeg("-i", str(clip), "-c:v", "copy", *audio, "-c:a", "pcm_s16le", str(other))
    transcript = caption(other, tmp_path, whisper)["transcript"]
    assert [round(s["start"]) for s in transcript] == [round(start) for start, _ in placed]


def test_corrupt_audio_packets_never_stop_the_captions(speech, whisper, tmp_path):
    clip, _ = speech
    mkv = tmp_path / "speech.mkv"
    ffmpeg("-i", str(clip), "-c", "copy", str(mkv))
    data = bytearray(mkv.read_bytes())
    rng = np.random.default_rng(0)
    for offset in rng.integers(len(data) // 4, len(data) * 3 // 4, size=40):  # damage the middle
        data[offset : offset + 16] = rng.integers(0, 256, size=16, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(bytes(data))
    result = caption(broken, tmp_path, whisper)
    assert result["frames_analysed"] > 0 and isinstance(result["transcript"], list)
    assert json.loads((tmp_path / "result.json").read_text())["batches"]


@pytest.mark.slow
def test_detector_memory_stays_flat_over_a_long_stream(speech):
    """Five minutes of speech and silence: the samples kept never exceed the longest segment."""
    clip, placed = speech
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(clip), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True,
        check=True,
    ).stdout
    audio = np.frombuffer(decoded, dtype=np.int16).astype(np.float32) / 32768
    detector, found, kept = SpeechDetector(max_segment=5.0), [], 0
    for lap in range(25):  # 25 x 12 s
        for start in range(0, len(audio), 4000):
            found += detector.feed(audio[start : start + 4000], lap * DURATION + start / 16000)
            kept = max(kept, len(detector._kept))
    assert len(found) == 2 * 25
    assert kept <= 6 * 16000


def test_audio_of_any_layout_becomes_16k_mono():
    six = np.full((22050, 6), 16384, dtype=np.int16)
    mono = to_mono_16k(six, 22050)
    assert mono.dtype == np.float32 and len(mono) == 16000
    assert mono.max() == pytest.approx(0.5, abs=1e-3)


def test_speech_subtitles_come_from_the_transcript(tmp_path):
    from test_writers import make_result

    result = make_result()
    result = CaptionResult(**{**result.__dict__, "transcript": [{"start": 0.5, "end": 1.5, "text": "hello there"}]})
    speech_only = WriteSRT("speech").render(result)
    assert "hello there" in speech_only and result.batches[0].description not in speech_only
    both = WriteSRT("both").render(result)
    assert "hello there" in both and result.batches[0].description in both
    assert WriteSRT().render(result) == WriteSRT("captions").render(make_result())


@pytest.mark.slow
def test_the_openai_recogniser_against_transformers_serve(speech, whisper, tmp_path):
    """A real OpenAI-compatible /v1/audio/transcriptions endpoint (``transformers serve``, serving
    the tiny Whisper by path, decoding our WAV uploads itself) transcribes the segments the VAD found."""
    pytest.importorskip("multipart", reason="transformers serve needs python-multipart for uploads")
    pytest.importorskip("soundfile", reason="transformers serve decodes uploads with soundfile")
    from tiny_server import transformers_serve

    clip, placed = speech
    with transformers_serve(tmp_path / "serve.log") as base_url:
        served = caption(clip, tmp_path, whisper, asr_backend="openai", asr_api_base=base_url)
    assert [round(s["start"]) for s in served["transcript"]] == [round(start) for start, _ in placed]
    assert all(s["text"] for s in served["transcript"])


@pytest.mark.slow
def test_the_cli_writes_speech_subtitles(speech, whisper, tmp_path):
    from helpers import run_cli

    clip, placed = speech
    done = run_cli(
        str(clip),
        "--transcribe",
        "--asr-model",
        str(whisper),
        "--batch-size",
        "2",
        "--srt",
        "speech.srt",
        "--subtitles",
        "speech",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cues = (tmp_path / "speech.srt").read_text().strip().split("\n\n")
    assert len(cues) == len(placed)
    assert len(json.loads((tmp_path / "result.json").read_text())["transcript"]) == len(placed)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["http-500", "nothing-listening", "html"])
def test_a_failing_speech_server_is_one_warning_and_the_captions_go_on(speech, tmp_path, failure):
    """Issue 26 #6: the run ended with exit 2 and nothing written; the message named no endpoint."""
    from fake_openai import FakeOpenAI
    from helpers import run_cli
    from tiny_server import free_port

    answers = {
        "http-500": (500, "application/json", b'{"error": {"message": "boom"}}'),
        "html": (200, "text/html", b"<html><body>Sign in</body></html>"),
    }
    clip, _ = speech
    with FakeOpenAI(transcription=lambda request: answers[failure]) as server:
        api_base = f"http://127.0.0.1:{free_port()}/v1" if failure == "nothing-listening" else server.url
        done = run_cli(
            str(clip),
            "--transcribe",
            "--asr-backend",
            "openai",
            "--asr-model",
            "whisper",
            "--asr-api-base",
            api_base,
            "--max-retries",
            "0",
            "--batch-size",
            "4",
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    [warning] = [line for line in done.stderr.splitlines() if "transcription stopped" in line]
    assert f"{api_base}/audio/transcriptions" in warning
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["transcript"] == [] and all(batch["description"] for batch in result["batches"])


@pytest.mark.slow
def test_the_cli_says_when_there_is_no_audio_and_prints_nothing_else(small_clip, whisper, tmp_path):
    """Issue 26 #19 (the line was logged at INFO, hidden) and #20 (transformers' loading bar and
    deprecation lines on stderr with --transcribe)."""
    from helpers import run_cli, stderr_lines

    done = run_cli(str(small_clip), "--transcribe", "--asr-model", str(whisper), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stderr_lines(done) == ["WARNING: transcribe: no audio stream; captioning the frames only"]
