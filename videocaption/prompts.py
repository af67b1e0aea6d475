"""The text the model is asked: one prompt per batch of frames, then the summary and title passes.

The prompts are user-message contents; the model backend wraps them in its own chat template.
Image placeholders are written as :data:`IMAGE_PLACEHOLDER`, one per frame, in frame order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

IMAGE_PLACEHOLDER = "<image>"

# Used for the intermediate rounds when a long video's descriptions do not fit one prompt.
PART_SUMMARY_PROMPT = (
    "Above are descriptions of consecutive parts of one video, in order. "
    "Summarize what happens in this stretch of the video in a few sentences."
)


def format_seconds(seconds: float) -> str:
    """Format a time for a prompt: ``83.5`` becomes ``1:23.5``."""
    minutes, rest = divmod(max(seconds, 0.0), 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


def batch_prompt(instruction: str, timestamps: Sequence[float], *, time_aware: bool, speech: str | None = None) -> str:
    """The prompt for one batch: an image placeholder per frame, then the instruction.

    Args:
        instruction: what to ask about the frames (the ``prompt`` option).
        timestamps: each frame's time in seconds, in order; one placeholder is made per entry.
        time_aware: label every frame with its time and say which span the frames cover, so
            the descriptions (and the summary built from them) can refer to moments in the video.
        speech: what is said while the frames are shown (with ``transcribe``), or None.
    """
    lines = []
    for index, seconds in enumerate(timestamps, start=1):
        label = f"Frame {index} at {format_seconds(seconds)}" if time_aware else f"Frame {index}"
        lines.append(f"{label}: {IMAGE_PLACEHOLDER}")
    if time_aware and timestamps:
        lines.append(
            f"The frames cover {format_seconds(timestamps[0])} to {format_seconds(timestamps[-1])} of the video."
        )
    if speech:
        lines.append(speech_line(speech))
    lines.append(instruction)
    return "\n".join(lines)


def events_prompt(timestamps: Sequence[float], schema: dict, *, time_aware: bool) -> str:
    """The events call of a batch: its frames, then the schema the answer must follow.

    The schema is quoted in full (compact), so that a model that reads it fills the fields it
    names; the decoding itself enforces it (docs/events.md).
    """
    frames = batch_prompt("", timestamps, time_aware=time_aware).rstrip("\n")
    schema_text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    when = " Times are seconds of the video." if time_aware else ""
    return f"{frames}\nDescribe these frames as one JSON object that follows this JSON Schema.{when}\n{schema_text}"


def speech_line(speech: str) -> str:
    """How the transcript of a batch's span is put to the model."""
    return f'Speech during these frames: "{" ".join(speech.split())}"'


def summary_prompt(instruction: str, descriptions: Sequence[tuple[float, float, str]], *, time_aware: bool) -> str:
    """The summary pass: every description in video order, then the instruction.

    Args:
        instruction: the ``summary_prompt`` option.
        descriptions: ``(start, end, text)`` per batch (or per partial summary), in order.
        time_aware: prefix each description with the span of the video it covers.
    """
    lines = []
    for start, end, text in descriptions:
        prefix = f"[{format_seconds(start)}-{format_seconds(end)}] " if time_aware else "- "
        lines.append(prefix + " ".join(text.split()))
    lines.append("")
    lines.append(instruction)
    return "\n".join(lines)


def title_prompt(instruction: str, summary: str) -> str:
    """The title pass works from the summary, not from the raw descriptions."""
    return f"Video summary: {' '.join(summary.split())}\n\n{instruction}"


def clean_title(text: str) -> str:
    """Keep the first non-empty line of the answer, without surrounding quotes or a 'Title:' tag."""
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("title:"):
            line = line[len("title:") :].strip()
        line = line.strip("\"'*` ").strip()
        if line:
            return line
    return text.strip()
