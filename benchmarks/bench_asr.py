"""What transcription costs: Silero VAD and recogniser real-time factors on 60 s of speech, and
the share of a whole captioning run they add.

Run from the repository root (needs espeak-ng, which ``scripts/setup.sh --test`` installs)::

    python -m benchmarks.bench_asr              # tiny random-weight Whisper
    python -m benchmarks.bench_asr --small      # also whisper-small's architecture (random weights)

Speech: six espeak-ng sentences, one every 10 s, under a 60 s generated video (silence between).
VAD: the audio (16 kHz mono, as the graph hands it over) fed to :class:`SpeechDetector` in
1024-sample pieces, like BMF's audio frames. Recogniser: each segment the VAD found transcribed
in process. Random weights never end an answer on purpose, so each segment is given the tokens
real speech of its length has (about 4 a second) and no more. Real-time factor (RTF) = seconds of
work / seconds of audio. Whole run: ``run_caption_graph`` on the clip (tiny DeepSeek-VL2 reference
checkpoint, 1 fps, batches of 4) with and without ``transcribe``; the best of ``--repeats`` each.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import TINY_MODEL, machine

SENTENCES = [
    "Welcome to the kitchen. Today we are making fresh bread from scratch.",
    "First, mix the flour with warm water and a spoon of yeast.",
    "Knead the dough for ten minutes until it feels smooth and elastic.",
    "Let it rest in a warm place for about an hour.",
    "Shape the loaf, score the top, and bake it at two hundred degrees.",
    "Wait until it cools down before you cut the first slice.",
]
DURATION = 60.0
TOKENS_PER_SECOND = 4  # what real speech gives Whisper (about 150 words a minute)


def speech_clip(folder: Path) -> Path:
    """60 s: testsrc2 video, a sentence every 10 s (44.1 kHz stereo AAC)."""
    inputs, filters = [], []
    for index, sentence in enumerate(SENTENCES):
        wav = folder / f"s{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), sentence], check=True)
        inputs += ["-i", str(wav)]
        delay = index * 10_000 + 1000
        filters.append(f"[{index + 1}:a]adelay={delay}|{delay},apad[a{index}]")
    labels = "".join(f"[a{i}]" for i in range(len(SENTENCES)))
    mix = ";".join(filters) + f";{labels}amix=inputs={len(SENTENCES)}:normalize=0:duration=longest[mix]"
    clip = folder / "speech60.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=320x240:rate=25:duration={DURATION}",
            *inputs,
            "-filter_complex",
            mix,
            "-map",
            "0:v",
            "-map",
            "[mix]",
            "-ac",
            "2",
            "-ar",
            "44100",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-t",
            str(DURATION),
            str(clip),
        ],
        check=True,
    )
    return clip


def audio_16k(clip: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(clip), "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32)


def time_vad(audio: np.ndarray):
    from videocaption.audio.vad import SpeechDetector

    detector = SpeechDetector()
    started = time.perf_counter()
    segments = []
    for start in range(0, len(audio), 1024):
        segments += detector.feed(audio[start : start + 1024], start / 16000)
    segments += detector.flush()
    return time.perf_counter() - started, segments


def build_small_whisper(path: Path) -> Path:
    """whisper-small's architecture (d_model 768, 12+12 layers, 51865-token vocabulary), random
    weights, with the tiny offline tokenizer (tokens beyond it are suppressed, so the output
    projection still costs its full size)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from tests.tiny_whisper import build_tiny_whisper

    build_tiny_whisper(path)
    tiny = WhisperConfig.from_pretrained(path)
    config = WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=768,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=tiny.pad_token_id,
        bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id,
        decoder_start_token_id=tiny.decoder_start_token_id,
    )
    generation = WhisperForConditionalGeneration.from_pretrained(path).generation_config
    generation.suppress_tokens = list(range(tiny.vocab_size, 51865))
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation
    model.save_pretrained(path)
    return path


def time_recognizer(path: Path, segments) -> float:
    from videocaption.audio.recognizers import WhisperRecognizer

    recognizer = WhisperRecognizer(str(path), "cpu", "float32")
    recognizer.transcribe(segments[0].audio[:16000], language="en")  # burn-in
    started = time.perf_counter()
    for segment in segments:
        recognizer._max_new_tokens = math.ceil(TOKENS_PER_SECOND * (segment.end - segment.start))
        recognizer.transcribe(segment.audio, language="en")
    return time.perf_counter() - started


def time_run(clip: Path, folder: Path, whisper: Path, transcribe: bool, repeats: int) -> float:
    from videocaption.graph.runner import run_caption_graph
    from videocaption.options import CaptionOptions

    options = CaptionOptions(
        model=str(TINY_MODEL),
        device="cpu",
        max_new_tokens=32,
        fps=1.0,
        batch_size=4,
        transcribe=transcribe,
        asr_model=str(whisper),
        result_path=str(folder / "result.json"),
    )
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        run_caption_graph(clip, options)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="also time whisper-small's architecture")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from tests.tiny_whisper import build_tiny_whisper

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = speech_clip(folder)
        audio = audio_16k(clip)
        seconds = len(audio) / 16000
        vad_s, segments = time_vad(audio)
        speech_s = sum(s.end - s.start for s in segments)
        print(f"audio {seconds:.1f} s, {len(segments)} speech segments, {speech_s:.1f} s of speech")
        print(f"VAD (Silero, onnxruntime, 1 thread): {vad_s:.2f} s, RTF {vad_s / seconds:.4f}")
        tiny = build_tiny_whisper(folder / "tiny-whisper")
        tiny_s = time_recognizer(tiny, segments)
        print(f"recogniser tiny Whisper: {tiny_s:.2f} s, RTF {tiny_s / seconds:.4f}")
        if args.small:
            small_s = time_recognizer(build_small_whisper(folder / "small-whisper"), segments)
            print(
                f"recogniser whisper-small architecture (random weights, fp32): {small_s:.2f} s, "
                f"RTF {small_s / seconds:.4f}"
            )
        plain = time_run(clip, folder, tiny, False, args.repeats)
        heard = time_run(clip, folder, tiny, True, args.repeats)
        print(
            f"whole run (tiny VLM, 60 frames): {plain:.2f} s without transcribe, {heard:.2f} s with "
            f"(tiny Whisper): +{heard - plain:.2f} s, {100 * (heard - plain) / heard:.1f}% of the run"
        )
        if args.small:
            added = vad_s + small_s
            print(
                f"whisper-small estimate: VAD + recogniser {added:.2f} s of work beside the VLM; "
                f"{100 * added / (plain + added):.1f}% of this run if done serially"
            )


if __name__ == "__main__":
    main()
