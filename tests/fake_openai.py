"""A fake OpenAI-compatible server on a loopback port, whose answers each test chooses.

``transformers serve`` (tiny_server.py) answers like a real server; this one answers what a
test needs a server to get wrong (HTML, invalid JSON, a list as ``content``, a 500 from the
speech endpoint) in milliseconds, and records every request (path and headers) it was sent.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple  # (HTTP status, content type, body), optionally + a dict of more headers


def completion(content: Any = "a rabbit in a meadow", **message: Any) -> Answer:
    """A chat completion whose message ``content`` is ``content`` (any JSON value)."""
    body = {
        "id": "fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content, **message}}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }
    return 200, "application/json", json.dumps(body).encode()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class FakeOpenAI:
    """Serves ``/v1/models`` (by default no models listed), ``/v1/chat/completions`` and ``/v1/audio/transcriptions``.

    Args:
        chat: the answer to a chat request (called with the request; default: a short caption).
        transcription: the answer to a transcription request.
        models: the answer to ``GET /v1/models``.
    """

    chat: Callable[[Request], Answer] = lambda request: completion()
    transcription: Callable[[Request], Answer] = lambda request: (
        200,
        "application/json",
        json.dumps({"text": "hello there"}).encode(),
    )
    models: Callable[[Request], Answer] = lambda request: (
        200,
        "application/json",
        json.dumps({"object": "list", "data": []}).encode(),
    )
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(*fake.models(self._record(b"")))

            def do_POST(self) -> None:
                request = self._record(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                answer = fake.transcription if self.path.endswith("/audio/transcriptions") else fake.chat
                self._answer(*answer(request))

            def _record(self, body: bytes) -> Request:
                request = Request(
                    self.command, self.path, {name.lower(): value for name, value in self.headers.items()}, body
                )
                fake.requests.append(request)
                return request

            def _answer(self, status: int, content_type: str, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- a scripted captioner: known descriptions per clip and time, citing summaries and answers ----

FRAME_TIME = re.compile(r"Frame \d+ at (\d+):(\d+(?:\.\d+)?)")
MOMENT = re.compile(r"^(?:\[[^\]]*\] )?\[(\d+)\] (.*)$")


def request_parts(request: Request) -> tuple[str, list[bytes]]:
    """The text of a chat request's user message and its images (JPEG bytes), in order."""
    message = json.loads(request.body)["messages"][-1]
    content = message["content"]
    if isinstance(content, str):
        return content, []
    text = "\n".join(part["text"] for part in content if part.get("type") == "text")
    images = [
        base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
        for part in content
        if part.get("type") == "image_url"
    ]
    return text, images


def mean_colour(jpeg: bytes) -> tuple[int, int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((1, 1), Image.Resampling.BOX)
    return image.getpixel((0, 0))


@dataclass
class ScriptedCaptions:
    """The chat answers of a model that describes what a test decided each clip shows.

    Args:
        describe: ``(colour, first_frame_seconds) -> description`` for a batch; the clip is
            told by its frames' mean colour (the tests' clips are solid colours), the time by
            the prompt's ``Frame 1 at M:SS.S`` label.
        answer_with: a word; an ``--ask`` prompt is answered citing every moment whose line holds
            it (and an out-of-range number, to check that it is dropped).
    """

    describe: Callable[[tuple[int, int, int], float], str]
    answer_with: str = ""
    bogus_citation: bool = False  # the answer also cites [42], a moment never given
    summary_cites: tuple[int, ...] = (1, 99)

    def __call__(self, request: Request) -> Answer:
        text, images = request_parts(request)
        if images:
            found = FRAME_TIME.search(text)
            seconds = int(found.group(1)) * 60 + float(found.group(2)) if found else 0.0
            return completion(self.describe(mean_colour(images[0]), seconds))
        if "Question:" in text:
            cited = [
                int(match.group(1))
                for line in text.splitlines()
                if (match := MOMENT.match(line)) and self.answer_with.lower() in match.group(2).lower()
            ]
            marks = "".join(f"[{n}]" for n in cited)
            bogus = " Nothing else is known [42]." if self.bogus_citation else ""
            return completion(f"It happens there {marks}.{bogus}")
        if "cite in square brackets" in text:  # the grounded summary
            first, second = self.summary_cites
            return completion(f"The video shows colours [{first}]. It ends [{second}].")
        return completion("Coloured Clips")  # the title
