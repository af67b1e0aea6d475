"""Outputs: a :class:`~videocaption.result.CaptionResult` written as result.json, subtitles or JSONL, atomically."""
