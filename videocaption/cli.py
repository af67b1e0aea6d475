"""Command line: ``python test_llm_caption.py [VIDEO] [options]``.

Like whisper's ``cli()``: parse, check, run the BMF graph, print the title and summary. A
problem with the input or the configuration is one line on stderr and exit code 2 (set
``LLM_CAPTION_DEBUG=1`` for the traceback); no result file is left behind for a failed run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

from . import progress
from .checkpoint import checkpoint_path
from .errors import BackendError, CaptionError, ModelLoadError, VideoInputError
from .result import BatchCaption, CaptionResult
from .writers import write_outputs
from .graph import REPO_ROOT, run_caption_graph
from .backends.openai_backend import API_KEY_ENV
from .options import BACKENDS, DEFAULT_MODEL, DEVICES, DTYPES, CaptionOptions
from .probe import VideoInfo, probe_video
from .library import command as library

SAMPLE_CLIP = REPO_ROOT / "big_bunny_5s_25fps.mp4"
TINY_CHECKPOINT = REPO_ROOT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3  # the run finished but some batch could not be described
EXIT_INTERRUPTED = 130
BESIDE_RESULT = "beside-result"
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}

log = logging.getLogger("llm_caption")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="test_llm_caption.py",
        description="Describe a video with DeepSeek-VL2 through a BMF graph; writes result.json.",
    )
    parser.add_argument("video", nargs="*", metavar="INPUT",
                        help="video file, or a directory of videos, to caption (default: the bundled Big Buck Bunny clip); "
                             "with --workers, any number of files, folders and @LIST files")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="hub id or local directory of the checkpoint; with --backend openai, the served "
                             "model name (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per prompt (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (default: %(default)s)")
    parser.add_argument("--output", default="result.json", help="result file (default: %(default)s)")
    parser.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="(default: %(default)s)")
    parser.add_argument("--multithreading", action="store_true",
                        help="describe several batches at once in one batched model call")
    parser.add_argument("--max-threads", type=int, default=None,
                        help="batches in flight with --multithreading (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer (default: %(default)s)")
    parser.add_argument("--prompt", help="instruction for each batch of frames")
    parser.add_argument("--summary-prompt", help="instruction for the summary pass")
    parser.add_argument("--title-prompt", help="instruction for the title pass")
    parser.add_argument("--no-time-aware", dest="time_aware", action="store_false",
                        help="do not tell the model the time of each frame")
    parser.add_argument("--output-dir", default="results",
                        help="with a directory as VIDEO: where the per-video results go (default: %(default)s)")
    parser.add_argument("--srt", nargs="?", const=BESIDE_RESULT, metavar="PATH",
                        help="also write SRT subtitles (alone: beside the result file)")
    parser.add_argument("--vtt", nargs="?", const=BESIDE_RESULT, metavar="PATH",
                        help="also write WebVTT subtitles (alone: beside the result file)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its checkpoint (RESULT.partial)")
    parser.add_argument("--backend", default="deepseek_vl2", choices=BACKENDS,
                        help="deepseek_vl2: the in-process runtime; transformers: any image-text-to-text model of "
                             "transformers; openai: an OpenAI-compatible server such as vLLM (default: %(default)s)")
    parser.add_argument("--api-base", help="openai backend: the server's URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--api-key", help=f"openai backend: the key (default: ${API_KEY_ENV}, else none); the "
                                           "environment variable keeps it out of the process list")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="openai backend: seconds one request may take (default: %(default)s)")
    parser.add_argument("--max-retries", type=int, default=3,
                        help="openai backend: retries after 429, 5xx, timeouts, refused connections "
                             "(default: %(default)s); with --multithreading, --max-threads requests are in flight")
    parser.add_argument("--verbose", action="store_true", help="show BMF's and FFmpeg's own log output")
    library.add_library_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CaptionOptions:
    if args.max_threads is not None and not args.multithreading:
        parser.error("--max-threads needs --multithreading")
    if args.api_key:
        # Through this process's environment, not the module's options: BMF prints those (the
        # graph dump) and a secret must not land in a log.
        os.environ[API_KEY_ENV] = args.api_key
    values = {
        "batch_size": args.batch_size, "result_path": args.output, "multithreading": args.multithreading,
        "max_threads": args.max_threads, "fps": args.fps, "model": args.model, "device": args.device,
        "dtype": args.dtype, "max_new_tokens": args.max_new_tokens, "time_aware": args.time_aware,
        "resume": args.resume, "backend": args.backend, "api_base": args.api_base, "api_key": None,
        "request_timeout": args.request_timeout, "max_retries": args.max_retries,
        "srt_path": _subtitle_path(args.srt, args.output, ".srt"),
        "vtt_path": _subtitle_path(args.vtt, args.output, ".vtt"),
    }
    for name in ("prompt", "summary_prompt", "title_prompt"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    try:
        return CaptionOptions(**values)
    except CaptionError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def _subtitle_path(value: str | None, result_path: str, suffix: str) -> str | None:
    """``--srt`` alone puts the subtitles beside the result file; ``--srt PATH`` puts them at PATH."""
    if value is None:
        return None
    return str(Path(result_path).with_suffix(suffix)) if value == BESIDE_RESULT else value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    library.check_library_arguments(args, parser)
    if not library.library_requested(args):
        args.video = library.single_input(args.video, parser, default=str(SAMPLE_CLIP))
    options = options_from_args(args, parser)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", force=True)
    if library.library_requested(args):
        return library.run_library_command(args, parser, options)
    try:
        if Path(args.video).is_dir():
            return caption_directory(Path(args.video), Path(args.output_dir), options, args)
        return report(caption_file(Path(args.video), options, args), options)
    except KeyboardInterrupt:
        saved = save_interrupted(options)
        print(f"\ninterrupted: {saved} described batches are saved in "
              f"{checkpoint_path(options.result_path)}; run the same command with --resume to continue",
              file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)  # BMF's threads are still running: leave without joining them
    except ModelLoadError as error:
        if os.environ.get("LLM_CAPTION_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        if options.model == DEFAULT_MODEL and options.backend == "deepseek_vl2":
            print(f"To smoke-test the pipeline without the real weights, run: python test_llm_caption.py "
                  f"--model {os.path.relpath(TINY_CHECKPOINT)} (a tiny random-weight checkpoint: its text is noise)",
                  file=sys.stderr)
        return EXIT_BAD_INPUT
    except CaptionError as error:
        if os.environ.get("LLM_CAPTION_DEBUG"):
            raise
        hint = resume_hint(options) if isinstance(error, BackendError) else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT


def caption_file(video: Path, options: CaptionOptions, args: argparse.Namespace,
                 console_bar_position: int = 0) -> dict:
    """Caption one video through the BMF graph; returns the result document."""
    info = probe_video(video)
    handler = logging.getLogger().handlers[0]
    with native_output_captured(enabled=not args.verbose) as console:
        handler.setStream(console)
        try:
            with progress_bar(info, options, console, position=console_bar_position):
                return run_caption_graph(video, options)
        finally:
            handler.setStream(sys.stderr)


def report(result: dict, options: CaptionOptions) -> int:
    """Print the title and summary; exit code 3 when some batch could not be described."""
    print(f"Title: {result['video_title']}")
    print(f"Summary: {result['summary']}")
    failed = [batch["batch_id"] for batch in result["batches"] if "error" in batch]
    print(f"{result['frames_analysed']} frames in {len(result['batches'])} batches, "
          f"{result['turnaround_time']:.1f} s; result written to {options.result_path}")
    if failed:
        print(f"incomplete: batches {', '.join(map(str, failed))} could not be described "
              "(see their 'error' fields)", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def caption_directory(folder: Path, output_dir: Path, options: CaptionOptions, args: argparse.Namespace) -> int:
    """Caption every video in ``folder``, one result per video in ``output_dir``, skipping done ones."""
    from tqdm import tqdm

    videos = find_videos(folder)
    if not videos:
        raise VideoInputError(f"{folder}: no video files (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    failures = 0
    with tqdm(videos, unit="video", desc="videos", disable=None, dynamic_ncols=True) as bar:
        for video in bar:
            result_path = output_dir / f"{video.stem}.json"
            video_options = options.replace(
                result_path=str(result_path),
                srt_path=str(result_path.with_suffix(".srt")) if options.srt_path else None,
                vtt_path=str(result_path.with_suffix(".vtt")) if options.vtt_path else None,
            )
            if is_done(result_path):
                bar.write(f"Skipping {video}: already captioned in {result_path}")
                continue
            try:
                result = caption_file(video, video_options, args, console_bar_position=1)
            except VideoInputError as error:
                bar.write(f"Skipping {error}")
                failures += 1
                continue
            bar.write(f"{video}: {result['video_title']} -> {result_path}")
    return EXIT_BAD_INPUT if failures else 0


def find_videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def is_done(result_path: Path) -> bool:
    """A finished result exists (an interrupted run leaves a checkpoint and no complete result)."""
    if checkpoint_path(result_path).exists() or not result_path.exists():
        return False
    try:
        return json.loads(result_path.read_text(encoding="utf-8")).get("complete", True) is not False
    except (OSError, ValueError):
        return False


def resume_hint(options: CaptionOptions) -> str:
    """How to continue a run that failed midway (a server that went away), if anything was kept."""
    try:
        saved = len(json.loads(checkpoint_path(options.result_path).read_text(encoding="utf-8"))["batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"; {saved} described batches are kept: run the same command with --resume to continue"


def save_interrupted(options: CaptionOptions) -> int:
    """Write what the checkpoint holds as a partial result (``complete: false``)."""
    try:
        saved = json.loads(checkpoint_path(options.result_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    batches = [BatchCaption(**batch) for batch in saved.get("batches", [])]
    partial = CaptionResult("", "", options.batch_size, batches, options.model, options.fps, 0.0,
                            summary_rounds=0, extra={"complete": False})
    write_outputs(partial, options)
    return len(batches)


@contextlib.contextmanager
def native_output_captured(enabled: bool) -> Iterator[TextIO]:
    """Send what BMF and FFmpeg print (graph dumps, stream info) to a temporary log.

    They write to file descriptors 1 and 2 from C++, below Python's ``sys.stdout``, so the
    descriptors themselves are redirected; Python's own output keeps going to the terminal
    through the returned console stream. On an unexpected failure the log's tail is shown.
    """
    if not enabled:
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_err), "w", buffering=1)
    with tempfile.NamedTemporaryFile("w+", prefix="llm_caption_", suffix=".log", delete=False) as native_log:
        # Python-level prints of BMF go through sys.stdout to descriptor 1, so they land here too.
        os.dup2(native_log.fileno(), 1)
        os.dup2(native_log.fileno(), 2)
        try:
            yield console
        except CaptionError:
            os.unlink(native_log.name)
            raise
        except BaseException:
            native_log.seek(0)
            tail = native_log.read()[-4000:]
            console.write(f"--- last lines of BMF's log ({native_log.name}) ---\n{tail}\n")
            raise
        else:
            os.unlink(native_log.name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            console.close()


@contextlib.contextmanager
def progress_bar(info: VideoInfo | None, options: CaptionOptions, console: TextIO,
                 position: int = 0) -> Iterator[None]:
    """A tqdm bar over sampled frames (total from the probed duration) with batches done."""
    from tqdm import tqdm

    total = math.floor(info.duration * options.fps) + 1 if info and info.duration else None
    bar = tqdm(total=total, unit="frame", desc="loading model", file=console, disable=None,
               dynamic_ncols=True, position=position, leave=position == 0)

    def update(report: progress.Progress) -> None:
        bar.set_description(report.stage, refresh=False)
        bar.set_postfix_str(f"{report.batches_done} batches described", refresh=False)
        bar.update(report.frames_sampled - bar.n)

    with progress.listening(update):
        try:
            yield
        finally:
            bar.close()
