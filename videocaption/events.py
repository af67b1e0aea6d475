"""Structured events: each batch also described as a JSON object that follows a JSON Schema.

The schema shipped in the package (``schemas/events.schema.json``, docs/events.md) or a user's
(``--events-schema``) is checked once, before any decoding (:func:`load_schema`): it must be valid
JSON Schema and compile to a grammar of llguidance, the library the in-process backends decode
with (``videocaption.backends.grammar``). For each batch the shipped schema's action times are
narrowed to the batch's span (:func:`batch_schema`), and every answer is parsed and validated
with jsonschema (:func:`parse_events`) whatever backend made it: a served model may ignore
``response_format``.

No torch here: this module is read by the options check, the captioner and every backend.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from videocaption.errors import InvalidOptionError

SCHEMA_RESOURCE = "schemas/events.schema.json"
# How the grammar is compiled: no free whitespace (a small model's loops of spaces would eat the
# budget, and compact JSON costs fewer tokens).
GRAMMAR_OPTIONS = {"whitespace_flexible": False}


def default_schema() -> dict[str, Any]:
    """The schema shipped in the package."""
    return json.loads(resources.files("videocaption").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))


def load_schema(path: str | None) -> dict[str, Any]:
    """The events schema: the shipped one (``path`` None) or the user's, checked.

    Raises:
        InvalidOptionError: the file cannot be read, is no JSON, is not valid JSON Schema, or
            uses a feature llguidance cannot compile (one line naming the file).
    """
    if path is None:
        return default_schema()
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidOptionError(f"events_schema {path}: cannot read it ({error.strerror or error})") from None
    except ValueError as error:
        raise InvalidOptionError(f"events_schema {path}: not JSON ({error})") from None
    check_schema(schema, name=path)
    return schema


def check_schema(schema: Any, *, name: str = "the events schema") -> None:
    """Refuse what is not JSON Schema (an object whose top type is ``object``) or does not compile.

    Raises:
        InvalidOptionError: one line, saying which check failed.
    """
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidOptionError(f"events_schema {name}: a JSON Schema is an object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise InvalidOptionError(f"events_schema {name}: not valid JSON Schema ({error.message})") from None
    if schema.get("type") != "object":
        raise InvalidOptionError(f'events_schema {name}: the events are one JSON object; give "type": "object"')
    error = grammar_error(schema)
    if error:
        raise InvalidOptionError(f"events_schema {name}: the grammar library cannot compile it ({error})")


def grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of ``schema`` (serialised, as its matchers take it)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=GRAMMAR_OPTIONS)


def grammar_error(schema: dict[str, Any]) -> str:
    """Why llguidance cannot compile ``schema`` ("" when it can); no tokenizer needed."""
    import llguidance

    try:
        compiled = grammar(schema)
    except ValueError as error:
        return str(error).splitlines()[0]
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    return " ".join(messages[0].split())[:300] if is_error else ""


def batch_schema(schema: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """``schema`` with its actions' ``start``/``end`` bounded to the batch's span [start, end].

    Only where the schema has the shipped shape (``actions`` items with numeric ``start`` and
    ``end``); another schema is returned as it is. Bounds are rounded outward to 0.1 s, so a
    frame time such as 2.04 stays inside.
    """
    items = schema.get("properties", {}).get("actions", {}).get("items", {})
    times = items.get("properties", {}) if isinstance(items, dict) else {}
    if not all(isinstance(times.get(key), dict) and times[key].get("type") == "number" for key in ("start", "end")):
        return schema
    narrowed = copy.deepcopy(schema)
    low, high = _floor_tenth(start), _ceil_tenth(max(end, start))
    for key in ("start", "end"):
        narrowed["properties"]["actions"]["items"]["properties"][key].update(minimum=low, maximum=high)
    return narrowed


def _floor_tenth(value: float) -> float:
    return int(value * 10 + 1e-9) / 10 if value >= 0 else -_ceil_tenth(-value)


def _ceil_tenth(value: float) -> float:
    tenths = int(value * 10 - 1e-9)
    return (tenths + (1 if tenths / 10 < value else 0)) / 10


def parse_events(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """``(events, None)`` when ``text`` is a JSON object valid against ``schema``, else ``(None, why)``.

    ``why`` is one line (it becomes the batch's ``events_error``).
    """
    import jsonschema

    try:
        events = json.loads(text)
    except ValueError as error:
        return None, f"the answer is not JSON ({error})"
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(events), key=lambda e: e.path)
    if errors:
        where = "/".join(str(part) for part in errors[0].absolute_path) or "the object"
        return None, f"the answer does not follow the schema at {where}: {' '.join(errors[0].message.split())[:200]}"
    if not isinstance(events, dict):
        return None, "the answer is not a JSON object"
    return events, None


def events_line(events: dict[str, Any]) -> str:
    """What the summary pass reads of a batch's events: the fields prose tends to leave out.

    Objects and on-screen text (names, signs, captions) help the summary name things; the rest
    repeats the description. Fields missing from a user's schema are left out.
    """
    parts = []
    for key, label in (("objects", "Objects"), ("on_screen_text", "Text on screen"), ("setting", "Setting")):
        value = events.get(key)
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value if str(item).strip())
        if isinstance(value, str) and value.strip():
            parts.append(f"{label}: {' '.join(value.split())}")
    return "; ".join(parts)
