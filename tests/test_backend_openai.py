"""The openai backend against a real OpenAI-compatible server: ``transformers serve`` on loopback.

The server loads tiny random checkpoints built offline (see ``tiny_vlms``) on demand, by path,
and runs with the hub offline, so a request for a model it does not have is a real HTTP 500
(the retried kind); a port with nothing listening is a real refused connection, and a 1 ms
timeout a real timeout.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import fake_openai
import helpers
import pytest
import tiny_vlms
from PIL import Image
from tiny_server import free_port, transformers_serve

from videocaption.backends import VisionLanguageModel, load_model
from videocaption.backends.openai_backend import DEFAULT_CONTEXT_LENGTH, OpenAIVLM, data_url
from videocaption.backends.transformers_backend import TransformersVLM
from videocaption.captioning.captioner import Captioner
from videocaption.errors import BackendError, CaptionError, InvalidOptionError
from videocaption.options import CaptionOptions
from videocaption.result import CaptionResult

pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served_vlms")
    return {name: tiny_vlms.BUILDERS[name](root / name) for name in ("llava", "idefics3")}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transformers serve`` on a free loopback port; yields its base URL, stops it at the end."""
    try:
        with transformers_serve(tmp_path_factory.mktemp("serve") / "serve.log") as base_url:
            yield base_url
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def served(server: str, checkpoints: dict[str, Path]) -> OpenAIVLM:
    return OpenAIVLM(str(checkpoints["llava"]), server, request_timeout=60, max_retries=1, retry_backoff=0.05)


def frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (48 + 8 * i, 40), (41 * i % 256, 120, 255 - 33 * i % 256)) for i in range(count)]


def jpeg_roundtrip(image: Image.Image) -> Image.Image:
    """The image as the server decodes it from the data URL."""
    import base64

    raw = base64.b64decode(data_url(image).split(",", 1)[1])
    return Image.open(io.BytesIO(raw)).convert("RGB")


def requests_of(images: list[Image.Image]) -> list[tuple[list[Image.Image], str]]:
    return [
        (images[0:2], "Frame 1 at 0:00.0: <image>\nFrame 2 at 0:01.0: <image>\nDescribe what happens."),
        (images[2:5], "A <image> then <image> and <image>. What changed?"),
        (images[5:6], "<image> Describe."),
        (images[6:8], "<image><image> Two frames."),
    ]


# -- talking to the real server ---------------------------------------------------------------


@pytest.mark.slow
def test_describe_batch_sends_requests_concurrently(served: OpenAIVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = requests_of(frames(8))
    alone = [served.describe_batch([request], max_new_tokens=MAX_NEW_TOKENS)[0] for request in requests]
    # Every request must be open at the same time for the barrier to let them through.
    barrier = threading.Barrier(len(requests), timeout=20)
    create = served.client.chat.completions.create

    def create_together(**kwargs):
        barrier.wait()
        return create(**kwargs)

    monkeypatch.setattr(served.client.chat.completions, "create", create_together)
    together = served.describe_batch(requests, max_new_tokens=MAX_NEW_TOKENS)
    assert together == alone
    assert all(isinstance(text, str) and text for text in together)


def test_server_sees_the_images_where_the_placeholders_are(served: OpenAIVLM, checkpoints: dict[str, Path]) -> None:
    """The served answers are the ones the same checkpoint gives in-process to the same images."""
    local = TransformersVLM.from_pretrained(str(checkpoints["llava"]), device="cpu")
    requests = requests_of(frames(8))
    decoded = [([jpeg_roundtrip(image) for image in images], prompt) for images, prompt in requests]
    served_answers = served.describe_batch(requests, max_new_tokens=MAX_NEW_TOKENS)
    local_answers = local.describe_batch(decoded, max_new_tokens=MAX_NEW_TOKENS)
    assert served_answers == local_answers
    prompts = ["Summarize the video.", "Give the video a short title."]
    served_texts = served.complete_batch(prompts, max_new_tokens=MAX_NEW_TOKENS)
    local_texts = local.complete_batch(prompts, max_new_tokens=MAX_NEW_TOKENS)
    assert served_texts == local_texts
    # the server's own counts (``usage``) are those of the same prompts in-process; it cannot
    # say which prompt tokens were images, and for a model other than DeepSeek-VL2 neither can we
    for served_usage, local_usage in zip(
        served_answers.usage + served_texts.usage, local_answers.usage + local_texts.usage
    ):
        assert (served_usage.prompt_tokens, served_usage.generated_tokens) == (
            local_usage.prompt_tokens,
            local_usage.generated_tokens,
        )
    assert [usage.image_tokens for usage in served_answers.usage] == [None] * len(requests)
    assert [usage.image_tokens for usage in served_texts.usage] == [0, 0]


def test_a_second_family_through_load_model(server: str, checkpoints: dict[str, Path]) -> None:
    options = CaptionOptions(
        backend="openai",
        api_base=server,
        model=str(checkpoints["idefics3"]),
        request_timeout=60,
        max_retries=0,
        multithreading=True,
        max_threads=2,
    )
    model = load_model(options)
    assert isinstance(model, OpenAIVLM) and isinstance(model, VisionLanguageModel)
    assert load_model(options) is model  # one client per endpoint and model
    texts = model.describe_batch(requests_of(frames(8))[:2], max_new_tokens=MAX_NEW_TOKENS)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    # transformers serve does not report max_model_len (vLLM does): the generous default applies
    assert model.context_length == DEFAULT_CONTEXT_LENGTH


def test_captioner_end_to_end(served: OpenAIVLM) -> None:
    options = CaptionOptions(
        backend="openai",
        api_base=served.api_base,
        model=served.name,
        batch_size=2,
        multithreading=True,
        max_threads=3,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    captioner = Captioner(options, served)
    for index, image in enumerate(frames(7)):
        captioner.add(image, float(index))
    result = captioner.finish()
    assert isinstance(result, CaptionResult) and result.complete
    assert [batch.frames for batch in result.batches] == [2, 2, 2, 1]
    assert result.model == served.name


# -- failures: retries, backoff, and the error naming the endpoint ----------------------------


def test_server_error_is_retried_then_names_the_endpoint(server: str, caplog: pytest.LogCaptureFixture) -> None:
    """An unknown model makes transformers serve (hub offline) answer HTTP 500: retried, then fatal."""
    model = OpenAIVLM("nobody/no-such-model", server, request_timeout=30, max_retries=2, retry_backoff=0.05)
    caplog.set_level(logging.WARNING, logger="llm_caption")
    caplog.clear()
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        model.describe_batch([(frames(1), "<image> Describe.")], max_new_tokens=MAX_NEW_TOKENS)
    error = raised.value
    assert isinstance(error, CaptionError)
    assert f"{server}/chat/completions" in str(error) and "HTTP 500" in str(error)
    assert "after 3 attempts" in str(error) and "nobody/no-such-model" in str(error)
    assert error.status == 500 and error.endpoint == f"{server}/chat/completions"
    retries = [record for record in caplog.records if "retrying in" in record.getMessage()]
    assert len(retries) == 2  # max_retries
    assert time.monotonic() - started >= 0.8 * (0.05 + 0.1)  # backoff doubles: 0.05 s, then 0.1 s


def test_client_error_is_not_retried(served: OpenAIVLM, caplog: pytest.LogCaptureFixture) -> None:
    """A request the server rejects (HTTP 422 for an unknown field) fails at once: retrying cannot help."""
    caplog.set_level(logging.WARNING, logger="llm_caption")
    caplog.clear()
    with pytest.raises(BackendError, match=r"HTTP 422") as raised:
        served._with_retries(
            "/chat/completions",
            lambda: served.client.chat.completions.create(
                model=served.name,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=2,
                extra_body={"no_such_field": 1},
            ),
        )
    assert raised.value.status == 422
    assert not [record for record in caplog.records if "retrying in" in record.getMessage()]


def test_refused_connection_fails_at_load_naming_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    api_base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="llm_caption")
    caplog.clear()
    with pytest.raises(BackendError) as raised:
        OpenAIVLM("any", api_base, request_timeout=5, max_retries=1, retry_backoff=0.01)
    assert f"{api_base}/models" in str(raised.value) and "cannot connect" in str(raised.value)
    assert "after 2 attempts" in str(raised.value) and raised.value.status is None
    assert len([record for record in caplog.records if "retrying in" in record.getMessage()]) == 1


def test_timeout_is_retried_then_fatal(server: str, checkpoints: dict[str, Path]) -> None:
    # No answer is generated within 1 ms (context_length given: no /models request on creation).
    model = OpenAIVLM(
        str(checkpoints["llava"]), server, request_timeout=0.001, max_retries=1, retry_backoff=0.01, context_length=2048
    )
    with pytest.raises(BackendError, match=r"no answer within 0.001 s") as raised:
        model.describe_batch([(frames(1), "<image> Describe.")], max_new_tokens=MAX_NEW_TOKENS)
    assert "after 2 attempts" in str(raised.value)


# -- what is sent, and the estimates ----------------------------------------------------------


def test_message_interleaves_text_and_images(served: OpenAIVLM) -> None:
    images = frames(2)
    message = served._message("Frame 1: <image>\nFrame 2: <image>\nDescribe.", images)
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert message["content"][1]["image_url"]["url"] == data_url(images[0])
    assert message["content"][3]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="placeholders"):
        served._message("<image><image>", images[:1])


def test_estimates_and_image_size(served: OpenAIVLM) -> None:
    assert served.count_tokens("x" * 300) == 100 + 16
    assert served.count_tokens("<image> x", [(640, 360)]) == served.count_tokens(" x") + 576
    assert served.max_image_tokens(4) == 4 * 576
    assert served.prepare_image(Image.new("RGB", (3840, 2160)), 4).size == (1024, 576)
    small = Image.new("RGB", (320, 240))
    assert served.prepare_image(small, 4) is small


def test_deepseek_vl2_image_tokens_are_its_processors(server: str) -> None:
    """Served DeepSeek-VL2 (by name) is sized by DeepSeek-VL2's processor rules: exact image tokens
    and worst cases, frames shrunk to one tile with more than two a prompt."""
    from videocaption.backends.openai_backend import is_deepseek_vl2
    from videocaption.deepseek_vl2 import HUB_GEOMETRY, PAIR_TEXT_RESERVE, DeepseekVL2

    # The tiny reference checkpoint has the official processor settings; what counts is the
    # processor's own rules (the server's processor applies them to the frames it is sent).
    runtime = DeepseekVL2.from_pretrained(
        str(tiny_vlms_root() / "tests/fixtures/deepseek_vl2_reference/model"), device="cpu"
    )
    processor = runtime.processor
    served = OpenAIVLM("deepseek-ai/deepseek-vl2-tiny", server, context_length=4096)
    assert served.deepseek_vl2 and is_deepseek_vl2("/models/DeepSeek_VL2-small") and not is_deepseek_vl2("llava")
    # without a checkpoint at hand, the hub models' settings: those of the official processor_config.json
    assert served.geometry == HUB_GEOMETRY == runtime.geometry
    sizes = [(1024, 576), (576, 1024), (640, 360), (100, 1000), (1024, 1024), (300, 200)]
    for count in (1, 2, 3, 4, 8):
        assert served.max_image_tokens(count) == runtime.max_image_tokens(count)
        for start in range(0, len(sizes) - count + 1) if count <= len(sizes) else []:
            group = sizes[start : start + count]
            prompt = "<image>" * count
            processed = processor.process_one(
                processor.user_conversation(prompt), [Image.new("RGB", size) for size in group]
            )
            images_tokens = served.count_tokens(prompt, group) - served.count_tokens(prompt)
            assert images_tokens == sum(processed.num_image_tokens), (count, group)
    frame = Image.new("RGB", (1920, 1080))
    assert served.prepare_image(frame, 4).size == (384, 216)  # one tile is all the model sees of it
    assert served.prepare_image(frame, 1).size == (1024, 576)  # tiled: the processor wants detail
    # Two frames a prompt: shrunk, where needed, to tilings that let both fit the context
    assert served.max_image_tokens(2) <= 4096 - PAIR_TEXT_RESERVE < 2 * processor.geometry.worst_image_tokens(2)
    for size in [(1920, 1080), (1080, 1920), (4000, 3000), (640, 360), (100, 3000), (3000, 100), (1024, 1024)]:
        shrunk = served.prepare_image(Image.new("RGB", size), 2).size
        tokens = processor.process_one(
            processor.user_conversation("<image><image>"), [Image.new("RGB", shrunk)] * 2
        ).num_image_tokens
        assert sum(tokens) <= served.max_image_tokens(2), (size, shrunk)
    # every batch_size from 1 to 8 fits the tiny model's 4096 tokens, as with the in-process runtime
    from videocaption.captioning.captioner import check_batch_fits

    for batch_size in range(1, 9):
        check_batch_fits(served, CaptionOptions(backend="openai", api_base=server, batch_size=batch_size))
    with pytest.raises(InvalidOptionError, match="largest batch that fits is 8"):
        check_batch_fits(served, CaptionOptions(backend="openai", api_base=server, batch_size=9))


def tiny_vlms_root() -> Path:
    return Path(__file__).resolve().parent.parent


def test_api_key_from_option_then_environment(
    server: str, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert OpenAIVLM(str(checkpoints["llava"]), server).client.api_key == "from-env"
    assert OpenAIVLM(str(checkpoints["llava"]), server, api_key="given").client.api_key == "given"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert OpenAIVLM(str(checkpoints["llava"]), server).client.api_key == "EMPTY"


# -- options ------------------------------------------------------------------------------------


def test_backend_options_are_checked() -> None:
    with pytest.raises(InvalidOptionError, match="backend must be one of"):
        CaptionOptions(backend="llama.cpp")
    with pytest.raises(InvalidOptionError, match="needs api_base"):
        CaptionOptions(backend="openai")
    with pytest.raises(InvalidOptionError, match="request_timeout"):
        CaptionOptions(backend="openai", api_base="http://localhost:8000/v1", request_timeout=0)
    with pytest.raises(InvalidOptionError, match="max_retries"):
        CaptionOptions(max_retries=-1)
    with pytest.raises(InvalidOptionError, match="api_base"):
        CaptionOptions.from_mapping({"backend": "openai", "api_base": ""})
    options = CaptionOptions.from_mapping(
        {
            "backend": "openai",
            "api_base": "http://h:8000/v1",
            "api_key": "sk-secret",
            "request_timeout": 5,
            "max_retries": 0,
        }
    )
    assert options.request_timeout == 5.0 and options.max_retries == 0
    assert "sk-secret" not in repr(options)


def test_api_key_never_reaches_result_json() -> None:
    from videocaption.result import BatchCaption

    options = CaptionOptions(backend="openai", api_base="http://h:8000/v1", api_key="sk-secret")
    result = CaptionResult(
        video_title="t",
        summary="s",
        batch_size=options.batch_size,
        batches=[BatchCaption(1, 1, 0.0, 0.0, "d")],
        model=options.model,
        fps=options.fps,
        turnaround_time=1.0,
    )
    assert "sk-secret" not in repr(result.to_dict())


def test_cli_flags() -> None:
    from videocaption.cli.main import build_parser, options_from_args

    parser = build_parser()
    args = parser.parse_args(
        [
            "--backend",
            "openai",
            "--api-base",
            "http://h:8000/v1",
            "--model",
            "m",
            "--request-timeout",
            "30",
            "--max-retries",
            "5",
            "--multithreading",
            "--max-threads",
            "8",
        ]
    )
    options = options_from_args(args, parser)
    assert (
        options.backend,
        options.api_base,
        options.api_key,
        options.request_timeout,
        options.max_retries,
        options.max_threads,
    ) == ("openai", "http://h:8000/v1", None, 30.0, 5, 8)
    with pytest.raises(SystemExit):
        options_from_args(parser.parse_args(["--backend", "openai"]), parser)


# -- through the command line: one-line errors, exit code 2, the checkpoint kept ---------------

CLI = [sys.executable, str(Path(__file__).resolve().parent.parent / "test_llm_caption.py")]
SAMPLE_CLIP = Path(__file__).resolve().parent.parent / "big_bunny_5s_25fps.mp4"  # 6 frames at 1 fps


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI on the sample clip with the served model (not the tiny checkpoint), never reaching a hub."""
    return helpers.run_cli(str(SAMPLE_CLIP), *args, cwd=cwd, fast=False, env={"HF_HUB_OFFLINE": "1"})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_cli_unreachable_endpoint_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    api_base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    done = run_cli(
        tmp_path,
        "--backend",
        "openai",
        "--api-base",
        api_base,
        "--model",
        "served-model",
        "--max-retries",
        "1",
        "--request-timeout",
        "5",
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert f"{api_base}/models" in errors[0] and "cannot connect" in errors[0] and "after 2 attempts" in errors[0]
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "result.json.partial").exists()


@pytest.mark.slow
def test_cli_api_key_stays_out_of_the_logs(tmp_path: Path) -> None:
    # --verbose shows BMF's graph dump, which prints the module's options.
    done = run_cli(
        tmp_path,
        "--backend",
        "openai",
        "--api-base",
        f"http://127.0.0.1:{free_port()}/v1",
        "--model",
        "served-model",
        "--max-retries",
        "0",
        "--api-key",
        "sk-do-not-print-1234",
        "--verbose",
    )
    assert done.returncode == 2
    assert "llm_caption" in done.stdout + done.stderr  # the graph dump is there...
    assert "sk-do-not-print-1234" not in done.stdout + done.stderr  # ...without the key


class FailingProxy:
    """A loopback HTTP proxy to the real server that answers 503 after ``allowed`` chat requests.

    Stands for a server that goes down in the middle of a run; counts the chat requests that
    carry images (batch descriptions), so a resumed run can be checked to skip finished batches.
    """

    def __init__(self, upstream: str, allowed: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream = upstream.rsplit("/v1", 1)[0]
        self.allowed = allowed
        self.chat_requests = 0
        self.image_requests = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    proxy.chat_requests += 1
                    passes = proxy.chat_requests <= proxy.allowed
                    if passes and b"image_url" in body:
                        proxy.image_requests += 1
                if passes:
                    self._forward(body)
                else:
                    self._answer(503, b'{"error": {"message": "overloaded (test proxy)"}}')

            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body,
                    method=self.command,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        self._answer(answer.status, answer.read())
                except urllib.error.HTTPError as error:
                    self._answer(error.code, error.read())

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api_base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_cli_server_failing_mid_run_keeps_the_described_batches(
    tmp_path: Path, server: str, checkpoints: dict[str, Path]
) -> None:
    """Two batches pass, then the server answers 503: exit code 2, one error line naming the
    endpoint, the two batches in the checkpoint; --resume then describes only the other four."""
    import json

    proxy = FailingProxy(server, allowed=2)
    common = [
        "--backend",
        "openai",
        "--api-base",
        proxy.api_base,
        "--model",
        str(checkpoints["llava"]),
        "--batch-size",
        "1",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--max-retries",
        "1",
    ]
    try:
        done = run_cli(tmp_path, *common)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        errors = error_lines(done.stderr)
        assert len(errors) == 1, done.stderr
        assert f"{proxy.api_base}/chat/completions" in errors[0] and "HTTP 503" in errors[0]
        assert "overloaded (test proxy)" in errors[0] and "after 2 attempts" in errors[0]
        assert errors[0].endswith("2 described batches are kept: run the same command with --resume to continue")
        assert not (tmp_path / "result.json").exists()
        saved = json.loads((tmp_path / "result.json.partial").read_text())
        assert [batch["batch_id"] for batch in saved["batches"]] == [1, 2]

        proxy.allowed, proxy.chat_requests, proxy.image_requests = 10**6, 0, 0  # the server is back
        done = run_cli(tmp_path, *common, "--resume")
        assert done.returncode == 0, (done.stdout, done.stderr)
        result = json.loads((tmp_path / "result.json").read_text())
        assert [batch["batch_id"] for batch in result["batches"]] == [1, 2, 3, 4, 5, 6]
        assert [batch["description"] for batch in result["batches"][:2]] == [
            batch["description"] for batch in saved["batches"]
        ]
        assert proxy.image_requests == 4  # batches 3 to 6 only
        assert not (tmp_path / "result.json.partial").exists()
    finally:
        proxy.close()


def test_deepseek_vl2_settings_come_from_a_local_checkpoint_when_the_server_names_one(tmp_path: Path) -> None:
    from videocaption.backends.openai_backend import _local_geometry
    from videocaption.deepseek_vl2 import ImageGeometry

    model = tiny_vlms_root() / "tests/fixtures/deepseek_vl2_reference/model"
    assert _local_geometry(str(model)) == ImageGeometry.from_checkpoint(model)
    assert _local_geometry(None) is None and _local_geometry("deepseek-ai/deepseek-vl2-tiny") is None
    (tmp_path / "processor_config.json").write_text('{"candidate_resolutions": [[384, 384]]}')
    assert _local_geometry(str(tmp_path)) is None  # unusable (no patch_size): the hub settings apply


# -- answers that are no chat completion (a fake server: tests/fake_openai.py) ------------------

MALFORMED = {
    "invalid-json": lambda request: (200, "application/json", b"{not json"),
    "html": lambda request: (200, "text/html", b"<html><body>Sign in</body></html>"),
    "json-list": lambda request: (200, "application/json", b"[1, 2]"),
    "list-content": lambda request: fake_openai.completion([{"type": "text", "text": "a rabbit"}]),
    "number-content": lambda request: fake_openai.completion(3),
}


@pytest.mark.slow
@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_answer_is_a_backend_error_naming_the_endpoint(answer) -> None:
    """Issue 26 #17: these ended with 'error: unexpected JSONDecodeError/AttributeError', exit 1."""
    with fake_openai.FakeOpenAI(chat=answer) as server:
        model = OpenAIVLM("m", server.url, max_retries=2)
        with pytest.raises(BackendError) as raised:
            model.complete_batch(["hello"], max_new_tokens=8)
        chats = [request for request in server.requests if request.path.endswith("/chat/completions")]
    assert f"{server.url}/chat/completions" in str(raised.value) and "\n" not in str(raised.value)
    assert raised.value.endpoint == f"{server.url}/chat/completions"
    assert len(chats) == 1  # a server answering nonsense is not asked again


@pytest.mark.parametrize(
    "answer",
    [
        (200, "text/html", b"<html><body>Welcome</body></html>"),
        (200, "application/json", b'{"data": "none"}'),
        (200, "application/json", b"{not json"),
    ],
    ids=["html", "no-list", "invalid-json"],
)
def test_a_web_page_as_the_model_list_is_a_backend_error_at_load(answer) -> None:
    with fake_openai.FakeOpenAI(models=lambda request: answer) as server:
        with pytest.raises(BackendError, match=f"{server.url}/models ") as raised:
            OpenAIVLM("m", server.url)
    assert "\n" not in str(raised.value)


def test_content_null_is_an_empty_description_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with fake_openai.FakeOpenAI(chat=lambda request: fake_openai.completion(None)) as server:
        model = OpenAIVLM("m", server.url)
        with caplog.at_level(logging.WARNING, logger="llm_caption"):
            assert list(model.complete_batch(["hello"], max_new_tokens=8)) == [""]
    assert any(
        "no text (content null" in record.getMessage() and server.url in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.slow
def test_cli_html_answer_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    with fake_openai.FakeOpenAI(chat=MALFORMED["html"]) as server:
        done = run_cli(
            tmp_path,
            "--backend",
            "openai",
            "--api-base",
            server.url,
            "--model",
            "m",
            "--max-new-tokens",
            "8",
            "--max-retries",
            "0",
        )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    [error] = error_lines(done.stderr)
    assert f"{server.url}/chat/completions" in error and "did not answer with a chat completion" in error


@pytest.mark.slow
def test_retry_after_on_429_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 26 (doubtful): our own retries ignored Retry-After; now it is waited for (capped)."""
    answers = iter([(429, "application/json", b'{"error": {"message": "slow down"}}', {"Retry-After": "1.5"})])
    with fake_openai.FakeOpenAI(chat=lambda request: next(answers, fake_openai.completion())) as server:
        model = OpenAIVLM("m", server.url, max_retries=1, retry_backoff=0.01)
        caplog.set_level(logging.WARNING, logger="llm_caption")
        started = time.monotonic()
        assert list(model.complete_batch(["hello"], max_new_tokens=8)) == ["a rabbit in a meadow"]
    assert time.monotonic() - started >= 1.4
    assert any(
        "HTTP 429" in record.getMessage() and "retrying in 1.5 s" in record.getMessage() for record in caplog.records
    )
