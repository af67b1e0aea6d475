"""Structured events (--events): every batch's JSON validates against its schema, whatever the weights.

The tiny random-weight checkpoints answer noise, so these tests assert only what constrained
decoding guarantees: the answer parses and validates (jsonschema) on every batch, also when
``max_new_tokens`` is so small that the model's own answer would be cut off mid-object, and a
budget too small for any complete object is refused before decoding.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from fake_openai import FakeOpenAI, completion
from helpers import FAST, SAMPLE_CLIP, TINY_MODEL, make_clip, run_cli, untimed
from PIL import Image

from videocaption.backends import load_model
from videocaption.captioning.captioner import Captioner
from videocaption.captioning.checkpoint import Checkpoint, fingerprint
from videocaption.errors import InvalidOptionError
from videocaption.events import batch_schema, default_schema, load_schema, parse_events
from videocaption.graph.runner import run_caption_graph
from videocaption.options import CaptionOptions
from videocaption.outputs.report import _events
from videocaption.result import BatchCaption

# Below what an unconstrained answer needs, above the shortest object (74 tokens here): the
# closing plan has to cut the summary short and close every field.
TIGHT = 90


@pytest.fixture(scope="module")
def tiny():
    return load_model(CaptionOptions(model=str(TINY_MODEL), device="cpu"))


def frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (64 + 8 * i, 48), (37 * i % 256, 90, 255 - 29 * i % 256)) for i in range(count)]


def assert_valid(batch: dict, schema: dict) -> None:
    """A batch of result.json has events valid against ``schema`` narrowed to its span."""
    assert "events_error" not in batch, batch.get("events_error")
    narrowed = batch_schema(schema, batch["start_time"], batch["end_time"])
    jsonschema.validate(batch["events"], narrowed)
    for action in batch["events"].get("actions", []):
        assert narrowed["properties"]["actions"]["items"]["properties"]["start"]["minimum"] <= action["start"]


def test_the_shipped_schema_is_valid_json_schema_with_the_documented_fields():
    schema = default_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert set(schema["required"]) >= {
        "summary",
        "objects",
        "people",
        "actions",
        "on_screen_text",
        "camera",
        "setting",
    }
    assert schema["properties"]["camera"]["enum"] == ["static", "pan", "tilt", "zoom", "handheld", "cut"]


def test_batch_schema_bounds_action_times_to_the_span():
    narrowed = batch_schema(default_schema(), 2.04, 5.0)
    times = narrowed["properties"]["actions"]["items"]["properties"]
    assert times["start"]["minimum"] == 2.0 and times["end"]["maximum"] == 5.0
    assert "minimum" not in default_schema()["properties"]["actions"]["items"]["properties"]["start"]
    good = {"summary": "", "objects": [], "people": 0, "on_screen_text": [], "camera": "pan", "setting": ""}
    assert parse_events(json.dumps({**good, "actions": [{"action": "a", "start": 2.5, "end": 4}]}), narrowed)[0]
    events, why = parse_events(json.dumps({**good, "actions": [{"action": "a", "start": 9, "end": 9.5}]}), narrowed)
    assert events is None and "actions/0/" in why and "maximum of 5.0" in why
    assert parse_events('{"summary": "cut', narrowed)[1].startswith("the answer is not JSON")


@pytest.mark.slow
@pytest.mark.parametrize("max_new_tokens", [TIGHT, 120])
def test_constrained_answers_always_validate_even_when_cut_short(tiny, max_new_tokens):
    schema = default_schema()
    schemas = [batch_schema(schema, 0.0, 1.0), batch_schema(schema, 3.0, 7.5), batch_schema(schema, 10.0, 10.0)]
    images = frames(6)
    requests = [
        (images[0:2], "<image><image> Events?"),
        (images[2:5], "<image> <image> <image> JSON"),
        (images[5:], "<image>"),
    ]
    answers = tiny.describe_batch(requests, max_new_tokens=max_new_tokens, json_schemas=schemas)
    for answer, narrowed, usage in zip(answers, schemas, answers.usage):
        jsonschema.validate(json.loads(answer), narrowed)
        assert usage.generated_tokens <= max_new_tokens
    assert tiny.last_guide.forced > 0 or max_new_tokens > TIGHT  # the tight budget did need the plan


@pytest.mark.slow
def test_a_budget_below_the_shortest_object_is_refused_before_decoding(tiny):
    least = tiny.min_events_tokens(default_schema())
    assert 10 < least < TIGHT
    with pytest.raises(InvalidOptionError, match=f"max_new_tokens {least - 1} cannot hold a complete events object"):
        Captioner(CaptionOptions(**{**FAST, "max_new_tokens": least - 1}, events=True), model=tiny)


def test_bad_schema_files_are_one_line_before_any_decoding(tmp_path):
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    not_schema = tmp_path / "not_schema.json"
    not_schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "no-such-type"}}}))
    uncompilable = tmp_path / "uncompilable.json"
    uncompilable.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=a)"}}}))
    for path, reason in (
        (not_json, "not JSON"),
        (not_schema, "not valid JSON Schema"),
        (uncompilable, "cannot compile"),
        (tmp_path / "missing.json", "cannot read"),
    ):
        with pytest.raises(InvalidOptionError, match=reason):
            load_schema(str(path))


@pytest.mark.slow
def test_the_cli_refuses_a_bad_schema_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "not_schema.json"
    path.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "no-such-type"}}}))
    done = run_cli(str(SAMPLE_CLIP), "--events", "--events-schema", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "not valid JSON Schema" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_every_batch_of_several_clips_has_valid_events(tmp_path):
    clips = [SAMPLE_CLIP, make_clip(tmp_path / "bars.mp4", duration=3.0)]
    schema = default_schema()
    for clip in clips:
        result = run_caption_graph(
            clip,
            CaptionOptions(**{**FAST, "max_new_tokens": TIGHT}, batch_size=2, events=True, result_path=None),
        ).to_dict()
        assert result["batches"]
        for batch in result["batches"]:
            assert_valid(batch, schema)
            assert batch["description"] is not None  # the description is still made


@pytest.mark.slow
def test_a_custom_schema_is_followed(tmp_path):
    custom = {
        "type": "object",
        "properties": {"mood": {"enum": ["calm", "tense"]}, "count": {"type": "integer", "minimum": 0}},
        "required": ["mood", "count"],
        "additionalProperties": False,
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(custom))
    options = CaptionOptions(
        **{**FAST, "max_new_tokens": 40}, batch_size=3, events=True, events_schema=str(path), result_path=None
    )
    result = run_caption_graph(SAMPLE_CLIP, options).to_dict()
    for batch in result["batches"]:
        jsonschema.validate(batch["events"], custom)


@pytest.mark.slow
def test_resume_keeps_the_events_of_the_restored_batches(tmp_path, tiny, caplog):
    options = CaptionOptions(
        **{**FAST, "max_new_tokens": TIGHT}, batch_size=2, events=True, result_path=str(tmp_path / "result.json")
    )
    images = frames(4)

    def run(opts):
        captioner = Captioner(opts, model=tiny)
        for second, image in enumerate(images):
            captioner.add(image, float(second))
        return captioner.finish()

    whole = run(options)
    assert all(batch.events for batch in whole.batches)
    # What an interrupted run leaves: the first batch in the checkpoint, under the run's fingerprint.
    first_frame = tiny.prepare_image(images[0].convert("RGB"), options.batch_size)
    Checkpoint(options.result_path).save(fingerprint(options, first_frame), whole.batches[:1])
    with caplog.at_level("INFO", logger="llm_caption"):
        resumed = run(options.replace(resume=True))
    assert "resuming after 1 batches" in caplog.text
    assert untimed(resumed.to_dict()) == untimed(whole.to_dict())
    assert fingerprint(options, first_frame) != fingerprint(options.replace(events=False), first_frame)


@pytest.mark.slow
def test_adaptive_sampling_with_events(tmp_path):
    options = CaptionOptions(
        **{**FAST, "max_new_tokens": TIGHT}, batch_size=3, events=True, sampling="adaptive", result_path=None
    )
    result = run_caption_graph(SAMPLE_CLIP, options).to_dict()
    assert result["sampling"] == "adaptive"
    for batch in result["batches"]:
        assert_valid(batch, default_schema())


def test_served_events_use_response_format_retry_once_then_record_events_error():
    good = {
        "summary": "A rabbit.",
        "objects": ["rabbit"],
        "people": 0,
        "actions": [],
        "on_screen_text": [],
        "camera": "static",
        "setting": "a meadow",
    }
    sent = []

    def chat(request):
        body = json.loads(request.body)
        sent.append(body)
        if "response_format" not in body:
            return completion("A rabbit sits in a meadow.")
        # The first events answer ignores the schema; the retry follows it (batch 1), or not (batch 2).
        events_calls = [b for b in sent if "response_format" in b]
        if len(events_calls) == 1:
            return completion('{"summary": "cut sh')
        if len(events_calls) == 2:
            return completion(json.dumps(good))
        return completion("not json at all")

    with FakeOpenAI(chat=chat) as server:
        options = CaptionOptions(backend="openai", model="fake", api_base=server.url, events=True, batch_size=1)
        model = load_model(options)
        captioner = Captioner(options, model=model, checkpoint=False)
        for second in (0.0, 1.0):
            captioner.add(Image.new("RGB", (64, 48)), second)
        result = captioner.finish()
    formats = [body["response_format"] for body in sent if "response_format" in body]
    assert formats[0]["type"] == "json_schema" and formats[0]["json_schema"]["schema"]["required"]
    first, second = result.to_dict()["batches"]
    assert first["events"] == good and "events_error" not in first
    assert second["description"] == "A rabbit sits in a meadow."
    assert "events" not in second and "not JSON" in second["events_error"]
    assert "\n" not in second["events_error"]
    assert len(formats) == 4  # two batches, each asked twice at most


def test_the_report_shows_an_events_object():
    events = {
        "summary": "A rabbit wakes.",
        "objects": ["rabbit", "tree"],
        "people": 0,
        "actions": [{"action": "stretches", "start": 1.5, "end": 2.0}],
        "on_screen_text": [],
        "camera": "static",
        "setting": "forest",
    }
    lines = _events(BatchCaption(1, 2, 1.0, 2.0, "text", events=events))
    assert lines[0] == "0:01.5 action: stretches, end: 2.0"
    assert "objects: rabbit, tree" in lines and "camera: static" in lines
    assert not any(line.startswith("on_screen_text") for line in lines)


def test_events_json_is_a_compact_string_and_result_json_carries_the_fields():
    batch = BatchCaption(1, 1, 0.0, 0.0, "x", events={"a": [1, "é"]})
    assert batch.events_json == '{"a":[1,"é"]}'
    assert batch.to_dict()["events"] == {"a": [1, "é"]}
    failed = BatchCaption(1, 1, 0.0, 0.0, "x", events_error="the answer is not JSON")
    assert failed.to_dict()["events_error"] == "the answer is not JSON" and failed.events_json is None


def test_events_schema_needs_events():
    with pytest.raises(InvalidOptionError, match="events_schema needs events"):
        CaptionOptions(events_schema="x.json")


def test_library_options_pass_events():
    from videocaption.options import options_with_role

    assert {"events", "events_schema"} <= set(options_with_role("library", "passed"))
    assert {"events", "events_schema"} <= set(options_with_role("fingerprint"))


@pytest.mark.slow
def test_a_library_worker_writes_each_videos_events(tmp_path):
    """Library mode's worker (in process, without Ray): the video's result.json has its events."""
    import dataclasses

    from videocaption.library.workers import CaptionWorker

    options = CaptionOptions(**{**FAST, "max_new_tokens": TIGHT}, batch_size=3, events=True)
    worker = CaptionWorker(dataclasses.asdict(options), str(tmp_path), cpus=1)
    row = worker.caption(str(SAMPLE_CLIP), "bunny.mp4")
    assert row["status"] == "ok", row
    result = json.loads((tmp_path / "bunny.mp4" / "result.json").read_text())
    for batch in result["batches"]:
        assert_valid(batch, default_schema())


@pytest.mark.slow
def test_the_transformers_backend_decodes_valid_events(tmp_path):
    import tiny_vlms

    path = tiny_vlms.BUILDERS["idefics3"](tmp_path / "idefics3")
    model = load_model(CaptionOptions(backend="transformers", model=str(path), device="cpu"))
    schema = default_schema()
    least = model.min_events_tokens(schema)
    schemas = [batch_schema(schema, 0.0, 2.0), batch_schema(schema, 5.0, 6.0)]
    images = frames(3)
    for budget in (least, least + 30):
        answers = model.describe_batch(
            [(images[:2], "<image><image> JSON?"), (images[2:], "<image>")], max_new_tokens=budget, json_schemas=schemas
        )
        for answer, narrowed in zip(answers, schemas):
            jsonschema.validate(json.loads(answer), narrowed)


@pytest.mark.slow
def test_a_live_runs_jsonl_batch_records_carry_the_events(tiny, tmp_path):
    import time

    from videocaption.live.captioner import LiveRun
    from videocaption.live.stream import LatestFrames, LiveFrame

    options = CaptionOptions(
        **{**FAST, "max_new_tokens": TIGHT},
        batch_size=2,
        events=True,
        result_path=str(tmp_path / "result.json"),
        jsonl_path=str(tmp_path / "live.jsonl"),
    )
    waiting = LatestFrames(capacity=8)
    run = LiveRun("test://frames", options, waiting, tiny)
    for second, image in enumerate(frames(4)):
        waiting.put(LiveFrame(image=image, stream_time=float(second), arrived=time.time()))
    waiting.close(drain=True)
    run.start()
    run.join()
    assert run.failure is None
    run.finish("the test ended")
    records = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    batches = [record for record in records if record["type"] == "batch"]
    assert len(batches) == 2
    for batch in batches:
        assert_valid(batch, default_schema())


def test_the_summary_pass_reads_the_events_fields_prose_leaves_out():
    from videocaption.captioning.captioner import _speech_and_events
    from videocaption.events import events_line

    events = {"objects": ["rabbit", " "], "on_screen_text": ["OPEN"], "setting": "a meadow", "people": 0}
    assert events_line(events) == "Objects: rabbit; Text on screen: OPEN; Setting: a meadow"
    assert events_line({"mood": "calm"}) == ""  # a custom schema without those fields adds nothing
    batch = BatchCaption(1, 1, 0.0, 0.0, "A rabbit.", speech="hello", events=events)
    assert _speech_and_events(batch) == '\nSpeech during these frames: "hello"\n' + events_line(events)
    assert _speech_and_events(BatchCaption(1, 1, 0.0, 0.0, "A rabbit.")) == ""
