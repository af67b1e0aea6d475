"""Throughput of an OpenAI-compatible endpoint against the number of requests in flight.

The openai backend keeps ``max_threads`` requests open at once (see ``--max-threads``); this
measures what that buys on a given server: for each level of concurrency it keeps exactly that
many requests in flight (closed loop: a worker sends its next request as soon as its last one is
answered) and reports requests/s, images/s and latency, with the ratios against one in flight.

Any endpoint (vLLM, SGLang, TGI, ...)::

    python -m benchmarks.bench_openai_concurrency --api-base http://gpu-host:8000/v1 \\
        --model deepseek-ai/deepseek-vl2-tiny --concurrency 1,2,4,8,16 --ignore-eos

Here, with no GPU and no network: ``--serve-tiny`` builds a tiny random checkpoint
(``tests/tiny_vlms.py``), starts ``transformers serve`` with it on loopback, runs, and stops it::

    python -m benchmarks.bench_openai_concurrency --serve-tiny llava

Every request is one batch prompt as the captioner sends it: ``--images`` frames of
``--image-size`` as base64 JPEG data URLs interleaved with the frame times, built once before
timing (encoding is not measured). ``--ignore-eos`` (vLLM's extension) makes every answer exactly
``--max-new-tokens`` long, so that levels compare equal work; servers that refuse unknown
fields (transformers serve) must run without it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from videocaption.backends.openai_backend import API_KEY_ENV, OpenAIVLM
from videocaption.options import DEFAULT_BATCH_PROMPT
from videocaption.prompts import batch_prompt

ROOT = Path(__file__).resolve().parent.parent


def frames(count: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    """Distinct frames (a gradient-ish background and a moving box), so no cache can share them."""
    images = []
    for index in range(count):
        shade = (seed * 53 + index * 29) % 256
        image = Image.new("RGB", size, (shade, 255 - shade, (shade * 7) % 256))
        draw = ImageDraw.Draw(image)
        x = (seed * 37 + index * size[0] // max(count, 1)) % max(1, size[0] - size[0] // 4)
        draw.rectangle([x, size[1] // 4, x + size[0] // 4, size[1] // 2], fill=(255, 255, 255))
        images.append(image)
    return images


def build_messages(model: OpenAIVLM, count: int, images: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    """``count`` distinct user messages shaped like the captioner's batch prompts."""
    messages = []
    for seed in range(count):
        times = [float(seed * images + i) for i in range(images)]
        prompt = batch_prompt(DEFAULT_BATCH_PROMPT, times, time_aware=True)
        messages.append(model._message(prompt, [model.prepare_image(f, images) for f in frames(images, size, seed)]))
    return messages


def one_request(model: OpenAIVLM, message: dict[str, Any], max_new_tokens: int, ignore_eos: bool) -> tuple[float, int]:
    """Seconds and completion tokens (0 when the server reports no usage) of one chat completion."""
    extra = {"ignore_eos": True} if ignore_eos else None
    started = time.perf_counter()
    response = model._with_retries(
        "/chat/completions",
        lambda: model.client.chat.completions.create(
            model=model.name, messages=[message], max_tokens=max_new_tokens, temperature=0.0, extra_body=extra
        ),
    )
    seconds = time.perf_counter() - started
    usage = getattr(response, "usage", None)
    return seconds, int(getattr(usage, "completion_tokens", 0) or 0)


def run_level(
    model: OpenAIVLM, messages: list[dict[str, Any]], in_flight: int, total: int, max_new_tokens: int, ignore_eos: bool
) -> dict[str, float]:
    """``total`` requests with exactly ``in_flight`` open at a time (until the last ones)."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    tokens = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal issued, tokens
        while True:
            with lock:
                if issued >= total or errors:
                    return
                index = issued
                issued += 1
            try:
                seconds, made = one_request(model, messages[index % len(messages)], max_new_tokens, ignore_eos)
            except BaseException as error:  # noqa: BLE001 - reported after the level
                with lock:
                    errors.append(error)
                return
            with lock:
                latencies.append(seconds)
                tokens += made

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    latencies.sort()
    return {
        "in_flight": in_flight,
        "requests": len(latencies),
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
        "latency_mean": statistics.fmean(latencies),
        "latency_p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    }


@contextmanager
def tiny_server(family: str, continuous_batching: bool, threads: int) -> Iterator[tuple[str, str]]:
    """``transformers serve`` on loopback with a tiny random ``family`` checkpoint preloaded,
    its torch limited to ``threads`` threads (spinning OpenMP threads on a shared machine
    otherwise slow everything down many times over)."""
    from tiny_server import transformers_serve

    from tests import tiny_vlms  # run from the checkout: python -m benchmarks.bench_openai_concurrency

    with tempfile.TemporaryDirectory(prefix="bench_openai_") as folder:
        checkpoint = str(tiny_vlms.BUILDERS[family](Path(folder) / family))
        arguments = [checkpoint, *(["--continuous-batching"] if continuous_batching else [])]
        try:
            with transformers_serve(
                Path(folder) / "serve.log", arguments, env={"OMP_NUM_THREADS": str(threads)}
            ) as url:
                yield url, checkpoint
        except RuntimeError as error:
            raise SystemExit(str(error)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-base", help="the endpoint, e.g. http://localhost:8000/v1")
    parser.add_argument("--model", help="the served model name")
    parser.add_argument("--api-key", help=f"the key (default: ${API_KEY_ENV}, else none)")
    parser.add_argument(
        "--serve-tiny",
        choices=("llava", "idefics3"),
        help="start transformers serve on loopback with this tiny random checkpoint and use it",
    )
    parser.add_argument(
        "--serve-continuous-batching",
        action="store_true",
        help="with --serve-tiny: start it with --continuous-batching",
    )
    parser.add_argument(
        "--serve-threads",
        type=int,
        default=1,
        help="with --serve-tiny: torch threads of the server (default: %(default)s)",
    )
    parser.add_argument("--concurrency", default="1,2,4,8", help="levels of requests in flight (default: %(default)s)")
    parser.add_argument(
        "--requests", type=int, default=0, help="requests per level (default: 4 x the level, at least 8)"
    )
    parser.add_argument(
        "--images", type=int, default=4, help="frames per request, as --batch-size (default: %(default)s)"
    )
    parser.add_argument("--image-size", default="640x360", help="WIDTHxHEIGHT of the frames (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--ignore-eos", action="store_true", help="answers of exactly --max-new-tokens (vLLM)")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="(default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="requests before timing (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.serve_tiny and not (args.api_base and args.model):
        parser.error("give --api-base and --model, or --serve-tiny")
    levels = [int(level) for level in args.concurrency.split(",")]
    size = tuple(int(side) for side in args.image_size.lower().split("x"))

    server = (
        tiny_server(args.serve_tiny, args.serve_continuous_batching, args.serve_threads)
        if args.serve_tiny
        else nullcontext()
    )
    with server as served:
        api_base, model_name = served if served else (args.api_base, args.model)
        model = OpenAIVLM(
            model_name, api_base, api_key=args.api_key, request_timeout=args.request_timeout, max_retries=1
        )
        most = max(args.requests or max(8, 4 * level) for level in levels)
        messages = build_messages(model, min(most, 64), args.images, size)
        for message in messages[: args.warmup]:
            one_request(model, message, args.max_new_tokens, args.ignore_eos)
        print(f"endpoint {api_base}, model {model_name}")
        print(
            f"{args.images} images of {size[0]}x{size[1]} a request, max_new_tokens {args.max_new_tokens}"
            f"{' (ignore_eos)' if args.ignore_eos else ''}; {os.cpu_count()} CPU cores here, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'in flight':>9} {'requests':>8} {'seconds':>8} {'req/s':>7} {'images/s':>8} {'tok/s':>7} "
            f"{'lat mean':>8} {'lat p95':>8} {'vs first':>8}"
        )
        base = None
        for level in levels:
            total = args.requests or max(8, 4 * level)
            row = run_level(model, messages, level, total, args.max_new_tokens, args.ignore_eos)
            base = base or row["requests_per_s"]
            print(
                f"{level:>9} {row['requests']:>8} {row['seconds']:>8.2f} {row['requests_per_s']:>7.2f} "
                f"{row['requests_per_s'] * args.images:>8.2f} {row['tokens_per_s']:>7.1f} "
                f"{row['latency_mean']:>7.2f}s {row['latency_p95']:>7.2f}s {row['requests_per_s'] / base:>7.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    from videocaption.errors import CaptionError

    try:
        main()
    except CaptionError as error:  # an unreachable endpoint, a refused key, a failed request
        raise SystemExit(f"error: {error}") from None
