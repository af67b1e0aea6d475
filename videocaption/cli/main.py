"""Command line: ``python test_llm_caption.py [VIDEO] [options]``.

Like whisper's ``cli()``: parse, check, run the BMF graph, print the title and summary. The
flags and their defaults come from :class:`~videocaption.options.CaptionOptions` itself.

Every way a run can end is one line on stderr at most (set ``LLM_CAPTION_DEBUG=1`` for a
traceback) and one exit code:

- 0: captioned; 3: captioned, but some batch could not be described;
- 2: bad input, a bad option, a model that cannot be found, an output that cannot be written;
- 130 (Ctrl-C) or 143 (SIGTERM): interrupted; the described batches stay in the checkpoint;
- 1: an unexpected error (a bug).

Result and subtitle files appear only when the whole result is ready, all together; a failed or
interrupted run writes none and replaces none.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from videocaption.api import caption_video
from videocaption.captioning.checkpoint import Checkpoint, finished_result
from videocaption.captioning.progress import Progress
from videocaption.errors import BackendError, CaptionError, ModelLoadError, OutputError, VideoInputError
from videocaption.events import load_schema
from videocaption.extras import missing_extras_message, needed_modules
from videocaption.library import command as library
from videocaption.media.probe import VIDEO_EXTENSIONS, MediaInfo
from videocaption.options import DEFAULT_MODEL, CaptionOptions, cli_flag
from videocaption.outputs.files import check_output_path
from videocaption.prompts import format_seconds
from videocaption.result import CaptionResult
from videocaption.sampling.samplers import shot_spans
from videocaption.search import command as search

# The checkout the package runs from, if it runs from one (an installed package has no sample
# clip and no test fixtures: then INPUT is required and the smoke-test hint is not given).
CHECKOUT = Path(__file__).resolve().parents[2]
SAMPLE_CLIP = CHECKOUT / "big_bunny_5s_25fps.mp4"
TINY_CHECKPOINT = CHECKOUT / "tests" / "fixtures" / "deepseek_vl2_reference" / "model"
EXIT_FAILED = 1  # an unexpected error: a bug
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3  # the run finished but some batch could not be described
# Interrupted by a signal: 128 + its number, as a shell reports a process the signal ended.
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: kill, systemd, Docker, Kubernetes
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BESIDE_RESULT = "beside-result"

log = logging.getLogger("llm_caption")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop, keep the checkpoint, exit 128 + the signal's number.

    A BaseException like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int, options: CaptionOptions | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.options = options  # the run that was stopped (set by the loop over a folder)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one ``error:`` line, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def program_name() -> str:
    """How the user started the CLI: ``llm-caption``, ``test_llm_caption.py``, ``python -m videocaption``,
    or what a wrapper names itself in ``LLM_CAPTION_PROG`` (``./run.sh demo``)."""
    if os.environ.get("LLM_CAPTION_PROG"):
        return os.environ["LLM_CAPTION_PROG"]
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "llm-caption"
    return "python -m videocaption" if name == "__main__.py" else name


def smoke_test_command() -> str:
    """The command the smoke-test hint suggests, as the user started this one."""
    name = program_name()
    return f"python {name}" if name.endswith(".py") else name


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`CaptionOptions` field that has one, plus the CLI's own."""
    parser = OneLineParser(
        prog=program_name(),
        description="Describe a video with DeepSeek-VL2 through a BMF graph; writes result.json.",
    )
    parser.add_argument(
        "video",
        nargs="*",
        metavar="INPUT",
        help="video file, or a directory of videos, to caption (default: the bundled Big Buck Bunny "
        "clip); with --workers, any number of files, folders and @LIST files",
    )
    for field in dataclasses.fields(CaptionOptions):
        if field.metadata.get("flag", None) is not None:
            flag, settings = _argument(field)
            parser.add_argument(flag, **settings)
    # The key's option has no flag of its own: --api-key goes through the environment (see options_from_args).
    api_key = next(field for field in dataclasses.fields(CaptionOptions) if field.name == "api_key")
    parser.add_argument(
        "--api-key", help=f"{api_key.metadata['help']}; the environment variable keeps it out of the process list"
    )
    parser.add_argument(
        "--output-dir",
        default="results",
        help="with a directory as VIDEO: where the per-video results go (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="show BMF's and FFmpeg's own log output")
    library.add_library_arguments(parser)
    search.add_search_arguments(parser)
    return parser


def _argument(field: dataclasses.Field) -> tuple[str, dict[str, Any]]:
    """The ``add_argument`` call of an option: its flag, and the settings its default implies."""
    flag = cli_flag(field)
    settings: dict[str, Any] = {
        "dest": field.name,
        "default": field.default,
        "help": field.metadata["help"],
        **field.metadata["argparse"],
    }
    if isinstance(field.default, bool):  # a switch: --multithreading, or --no-time-aware
        settings["action"] = "store_false" if field.default else "store_true"
    elif settings.get("nargs") == "?":  # --srt alone: beside the result file
        settings["const"] = BESIDE_RESULT
    elif "type" not in settings and field.default is not None:
        settings["type"] = type(field.default)
    return flag, settings


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CaptionOptions:
    """The options the flags give, checked in one step (a bad value exits through ``parser.error``)."""
    if args.api_key:
        from videocaption.backends.openai_backend import API_KEY_ENV

        # Through this process's environment, not the module's options: BMF prints those (the
        # graph dump) and a secret must not land in a log.
        os.environ[API_KEY_ENV] = args.api_key
    values = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(CaptionOptions)
        if field.metadata.get("flag", None) is not None
    }  # (not api_key: it went to the environment)
    values["srt_path"] = _beside_result(args.srt_path, args.result_path, ".srt")
    values["vtt_path"] = _beside_result(args.vtt_path, args.result_path, ".vtt")
    values["report_path"] = _beside_result(args.report_path, args.result_path, ".html")
    if values.get("events_schema"):  # library workers may run in another folder
        values["events_schema"] = os.path.abspath(values["events_schema"])
    try:
        options = CaptionOptions(**values)
        if options.events:  # a user's schema is checked here, before any model or decoder starts
            load_schema(options.events_schema)
    except CaptionError as error:
        parser.error(str(error))
    needed = needed_modules(
        options,
        library=library.library_requested(args),
        segments=bool(getattr(args, "segments", None)),
        embed_model=bool(getattr(args, "embed_model", None)),
    )
    missing = missing_extras_message(needed)
    if missing:
        parser.error(missing)
    return options


def _beside_result(value: str | None, result_path: str, suffix: str) -> str | None:
    """``--srt`` (``--vtt``, ``--report``) alone puts the file beside the result file; ``--srt PATH`` at PATH."""
    if value is None:
        return None
    return str(Path(result_path).with_suffix(suffix)) if value == BESIDE_RESULT else value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    library.check_library_arguments(args, parser)  # with --workers: also refuses --live
    search.check_search_arguments(args, parser)
    if search.search_requested(args):  # reads captioned videos; captions nothing
        options = options_from_args(args, parser)
        with logging_to_stderr(args.verbose):
            return search.run_search_command(args, options)
    # Imported only now: they bring torch and BMF (seconds), which --search never needs.
    from videocaption.live import captioner as live

    if library.library_requested(args):  # many videos on Ray: its own Ctrl-C handling and exit codes
        options = options_from_args(args, parser)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s", force=True
        )
        library.stop_on_signals()  # Ctrl-C and SIGTERM stop the library run, keeping its finished rows
        return library.run_library_command(args, parser, options)
    if not args.video and not SAMPLE_CLIP.is_file():
        parser.error("give a video to caption (the sample clip is only in the project's checkout)")
    args.video = library.single_input(args.video, parser, default=str(SAMPLE_CLIP))
    if live.is_live_input(args.video, args.live):  # a stream: runs until it ends or is stopped
        if args.segments:
            parser.error("--segments writes a finished video's table; it does not go with live streams")
        options = options_from_args(args, parser)
        with native_output_hidden(enabled=not args.verbose), logging_to_stderr(args.verbose):
            return live.command(args.video, options)
    live_only = live.live_options_given(options_from_args(args, parser))
    if live_only:
        flags = [cli_flag(field) for field in dataclasses.fields(CaptionOptions) if field.name in live_only]
        parser.error(f"{', '.join(flags)} only apply to live streams (a live URL, or --live)")
    with stop_signals_raise():
        options = options_from_args(args, parser)
        with native_output_hidden(enabled=not args.verbose), logging_to_stderr(args.verbose):
            try:
                if Path(args.video).is_dir():
                    if args.segments:
                        parser.error("--segments names one video's table; give one video (or use library mode)")
                    return caption_directory(Path(args.video), Path(args.output_dir), options, verbose=args.verbose)
                if args.segments:
                    check_output_path(args.segments)
                result = caption_file(Path(args.video), options, verbose=args.verbose)
                if args.segments:
                    search.write_result_segments(result, args.video, options, args.segments)
                return report(result, options)
            except Interrupted as stop:
                leave_interrupted(stop, stop.options or options)
            except CaptionError as error:
                if os.environ.get("LLM_CAPTION_DEBUG"):
                    raise
                print(f"error: {error}{resume_hint(options, error)}", file=sys.stderr)
                if (
                    isinstance(error, ModelLoadError)
                    and options.model == DEFAULT_MODEL
                    and options.backend == "deepseek_vl2"
                    and TINY_CHECKPOINT.is_dir()
                ):
                    print(
                        f"To smoke-test the pipeline without the real weights, run: {smoke_test_command()} "
                        f"--model {os.path.relpath(TINY_CHECKPOINT)} (a tiny random-weight checkpoint: its text "
                        "is noise)",
                        file=sys.stderr,
                    )
                return EXIT_BAD_INPUT
            except Exception as error:  # a bug: still one line, unless asked for the traceback
                if os.environ.get("LLM_CAPTION_DEBUG"):
                    raise
                reason = (str(error).strip().splitlines() or [""])[0]
                print(
                    f"error: unexpected {type(error).__name__}: {reason} (rerun with --verbose for BMF's log, "
                    f"LLM_CAPTION_DEBUG=1 for the traceback){resume_hint(options, error)}",
                    file=sys.stderr,
                )
                return EXIT_FAILED


def caption_file(
    video: Path, options: CaptionOptions, *, bar_position: int = 0, verbose: bool = False
) -> CaptionResult:
    """Caption one video through the BMF graph with a progress bar; returns its result (written
    to the files ``options`` names).

    The one probe of the video sizes the progress bar and goes on to the run (the decode mode,
    the audio, the end of the video stream that caps the last subtitle cue). Unless
    ``verbose``, what BMF's Python side prints (the graph dump) is dropped.
    """
    from videocaption.graph.build import probe_input

    media = probe_input(video, options)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(contextlib.closing(ProgressBar(media, options, position=bar_position)))
        if not verbose:
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        return caption_video(video, options=options, media=media, on_progress=bar)


def report(result: CaptionResult, options: CaptionOptions) -> int:
    """Print the title and summary; exit code 3 when some batch could not be described."""
    print(f"Title: {result.video_title}")
    print(f"Summary: {result.summary}")
    failed = [batch.batch_id for batch in result.batches if batch.error is not None]
    print(
        f"{result.frames_analysed} frames in {len(result.batches)} batches, "
        f"{result.turnaround_time:.1f} s; result written to {options.result_path}"
    )
    print_shots(result)
    if failed:
        print(
            f"incomplete: batches {', '.join(map(str, failed))} could not be described (see their 'error' fields)",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return 0


def print_shots(result: CaptionResult) -> None:
    """With adaptive sampling: each shot's time span and the near-duplicates not sent."""
    spans = shot_spans([batch.to_dict() for batch in result.batches])
    if spans:
        times = ", ".join(f"{format_seconds(start)}-{format_seconds(end)}" for _, start, end in spans)
        print(f"{len(spans)} shots: {times}; {result.frames_skipped} near-duplicate frames skipped")


def caption_directory(folder: Path, output_dir: Path, options: CaptionOptions, *, verbose: bool = False) -> int:
    """Caption every video in ``folder``, one result per video in ``output_dir``, skipping done ones.

    A video that cannot be read, or whose result cannot be written (a name too long), is skipped
    with one line on stderr, and the exit code is then 2. Videos sharing a stem (``same.mp4``,
    ``same.mkv``) get results named after their whole file name (``same.mp4.json``), so neither
    is taken for the other's.
    """
    from tqdm import tqdm

    videos = find_videos(folder)
    if not videos:
        raise VideoInputError(f"{folder}: no video files (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    stems = collections.Counter(video.stem for video in videos)
    failures = 0
    with tqdm(videos, unit="video", desc="videos", disable=None, dynamic_ncols=True) as bar:
        for video in bar:
            result_path = output_dir / f"{video.stem if stems[video.stem] == 1 else video.name}.json"
            video_options = options.replace(
                result_path=str(result_path),
                srt_path=str(result_path.with_suffix(".srt")) if options.srt_path else None,
                vtt_path=str(result_path.with_suffix(".vtt")) if options.vtt_path else None,
                report_path=str(result_path.with_suffix(".html")) if options.report_path else None,
            )
            if is_done(result_path):
                bar.write(f"Skipping {video}: already captioned in {result_path}")
                continue
            try:
                result = caption_file(video, video_options, bar_position=1, verbose=verbose)
            except (VideoInputError, OutputError) as error:  # this video's problem: the next one goes on
                bar.write(f"skipped {error}", file=sys.stderr)
                failures += 1
                continue
            except Interrupted as stop:
                stop.options = video_options
                raise
            bar.write(f"{video}: {result.video_title} -> {result_path}")
    return EXIT_BAD_INPUT if failures else 0


def find_videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def is_done(result_path: Path) -> bool:
    """A finished result exists (an interrupted run leaves a checkpoint and no result)."""
    return finished_result(result_path) is not None


def resume_hint(options: CaptionOptions, error: BaseException) -> str:
    """How to continue a run that failed midway (a server that went away, a full disk)."""
    if isinstance(error, CaptionError) and not isinstance(error, (BackendError, OutputError)):
        return ""
    saved = Checkpoint(options.result_path).saved_batches()
    if not saved:
        return ""
    return f"; {saved} described batches are kept: run the same command with --resume to continue"


def leave_interrupted(stop: Interrupted, options: CaptionOptions) -> NoReturn:
    """Say what the checkpoint keeps, in one line, and exit with 128 + the signal's number.

    The graph's threads are still running (a model call may take a while), so the process
    leaves without joining them (``os._exit``); nothing is lost, as the checkpoint is replaced
    atomically after each batch and an interrupted run writes no result.
    """
    code = 128 + stop.signum
    checkpoint = Checkpoint(options.result_path)
    saved = checkpoint.saved_batches()
    if saved:
        kept = (
            f"{saved} described batches are saved in {checkpoint.path}; run the same command with --resume to continue"
        )
    else:
        kept = "no batch was described yet, so nothing was saved"
    name = "SIGTERM" if stop.signum == signal.SIGTERM else "Ctrl-C"
    lead = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line on a terminal
    print(f"{lead}interrupted ({name}): {kept}", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread; a second one exits at once.

    BMF's engine installs its own handlers when a graph starts; the graph runner takes these
    back (:func:`videocaption.graph.runner.keep_python_signal_handlers`).
    """

    def exit_now(signum: int, frame: object) -> None:
        os._exit(128 + signum)  # the second signal: the checkpoint is always whole on disk

    def interrupt(signum: int, frame: object) -> None:
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, exit_now)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def native_output_hidden(enabled: bool) -> Iterator[None]:
    """Keep what BMF and FFmpeg print (graph dumps, stream info, their log) off the terminal.

    They write to file descriptors 1 and 2 from C++, below Python's ``sys.stdout``, so the
    descriptors themselves point at /dev/null for the whole run (BMF's threads can still log
    after an interrupted or stalled run), while Python's ``sys.stdout`` and ``sys.stderr`` go on
    writing to the terminal through copies of the descriptors. No log file is made, so none
    is ever left behind; ``--verbose`` shows the log instead.
    """
    if not enabled:
        yield
        return
    python_out, python_err = sys.stdout, sys.stderr
    python_out.flush()
    python_err.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    sys.stdout = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding=python_out.encoding, errors="replace")
    sys.stderr = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding=python_err.encoding, errors="replace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.close()
        sys.stdout, sys.stderr = python_out, python_err
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)


@contextlib.contextmanager
def logging_to_stderr(verbose: bool) -> Iterator[None]:
    """The package's log lines on (the current) ``sys.stderr``: warnings, or everything with --verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


class ProgressBar:
    """A tqdm bar over sampled frames with batches described, fed with the run's progress reports.

    Its total is estimated from the probed duration; when the run is done it is set to the real
    count, so a finished run always ends at 100%.
    """

    def __init__(
        self, media: MediaInfo, options: CaptionOptions, *, position: int = 0, disable: bool | None = None, file=None
    ) -> None:
        from tqdm import tqdm

        total = math.floor(media.duration * options.fps) + 1 if media.duration else None
        self._bar = tqdm(
            total=total,
            unit="frame",
            desc="loading model",
            file=file or sys.stderr,
            disable=disable,
            dynamic_ncols=True,
            position=position,
            leave=position == 0,
        )

    def __call__(self, progress: Progress) -> None:
        bar = self._bar
        bar.set_description(progress.stage, refresh=False)
        bar.set_postfix_str(f"{progress.batches_done} batches described", refresh=False)
        if progress.stage == "done":
            bar.total = progress.frames_sampled
        bar.update(progress.frames_sampled - bar.n)
        if progress.stage == "done":
            bar.refresh()

    def close(self) -> None:
        self._bar.close()
