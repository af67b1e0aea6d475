"""The command line of library mode: ``INPUT... --workers N | --ray-address ADDR``.

The single-video command line adds these flags with :func:`add_library_arguments` and hands
over to :func:`run_library_command` when :func:`library_requested` says so. Ray is imported only
then, so the single-video path never pays for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from videocaption.errors import CaptionError
from videocaption.library.manifest import FAILED, OK, SKIPPED, ManifestRow
from videocaption.options import CaptionOptions, cli_flag, options_with_role

EXIT_OK, EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130
DEFAULT_OUTPUT_DIR = "results"
MANIFEST_NAME = "manifest.parquet"
LIBRARY_ONLY = ("manifest", "cpus_per_worker", "gpus_per_worker", "video_retries", "retry_failed")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopped_by: list[int] = []  # the stop signal that interrupted this process's run


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt (the run stops, keeping its finished rows).

    The exit status then says which one it was (130 or 143, as in single-video mode). Ray
    installs its own SIGTERM handler in ``ray.init`` (a C++ stack dump, then an abort); the
    runner puts these back after it (see ``RaySession``).
    """

    def stop(signum: int, frame: object) -> None:
        _stopped_by.append(signum)
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def add_library_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the library flags (a group of their own in ``--help``)."""
    group = parser.add_argument_group(
        "library mode (many videos on Ray)",
        "With --workers or --ray-address, INPUT may be any mix of video files, folders (walked "
        "recursively) and @LIST files (one path, folder or URL a line); --output is then the output "
        f"folder (default: {DEFAULT_OUTPUT_DIR}/), where each video's result.json lands in a folder "
        "mirroring its absolute path (OUTPUT/data/videos/a.mp4/ for /data/videos/a.mp4; URLs under "
        "OUTPUT/_urls/HOST/), so adding inputs never moves a result. Rerunning the same command "
        "continues where it stopped.",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray workers, each holding one model (alone: starts a local Ray instance)",
    )
    group.add_argument("--ray-address", metavar="ADDR", help="use an existing Ray cluster: auto, or ray://HOST:10001")
    group.add_argument(
        "--manifest",
        metavar="PATH",
        help=f"the Parquet manifest, one row per input (default: OUTPUT/{MANIFEST_NAME}; "
        "rows are journaled as they finish in PATH with suffix .jsonl)",
    )
    group.add_argument(
        "--cpus-per-worker",
        type=float,
        metavar="N",
        help="Ray CPUs per worker; torch uses as many threads (default: 1)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="N",
        help="Ray GPUs per worker, fractions allowed (default: 1 when the cluster has GPUs and "
        "the model runs in the workers, 0 with --backend openai)",
    )
    group.add_argument(
        "--video-retries",
        type=int,
        metavar="N",
        help="times a video is retried when its worker process dies (default: 3); "
        "--max-retries stays the openai backend's HTTP retries",
    )
    group.add_argument(
        "--retry-failed", action="store_true", help="caption again the inputs an earlier run recorded as failed"
    )


def library_requested(args: argparse.Namespace) -> bool:
    return args.workers is not None or args.ray_address is not None


def check_library_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` (exit 2, one line) for library flags that make no sense as given."""
    if not library_requested(args):
        given = [name for name in LIBRARY_ONLY if getattr(args, name) not in (None, False)]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} needs --workers N or --ray-address ADDR")
        return
    fields = {field.name: field for field in dataclasses.fields(CaptionOptions)}
    for name in options_with_role("library", "refused"):  # --live: one stream, not a library
        if getattr(args, name) != fields[name].default:
            parser.error(
                f"{cli_flag(fields[name])} captions one stream; it does not go with --workers or --ray-address"
            )
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        parser.error(f"--cpus-per-worker must be positive, got {args.cpus_per_worker:g}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        parser.error(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker:g}")
    if args.gpus_per_worker and args.backend == "openai":
        parser.error("--gpus-per-worker: with --backend openai the workers hold no model and need no GPU")
    if args.video_retries is not None and args.video_retries < 0:
        parser.error(f"--video-retries must be 0 or more, got {args.video_retries}")
    for flag in ("srt", "vtt"):
        if getattr(args, f"{flag}_path") not in (None, "beside-result"):
            parser.error(f"--{flag} PATH names one file; in library mode use --{flag} alone (beside each result.json)")


def library_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The :class:`LibraryConfig` the flags describe."""
    from videocaption.library.ray_runner import LibraryConfig

    given_output = args.result_path if args.result_path != parser.get_default("result_path") else None
    output_dir = Path(given_output or args.output_dir or DEFAULT_OUTPUT_DIR)
    return LibraryConfig(
        inputs=tuple(args.video),
        output_dir=output_dir,
        manifest_path=Path(args.manifest) if args.manifest else output_dir / MANIFEST_NAME,
        workers=args.workers,
        ray_address=args.ray_address,
        cpus_per_worker=args.cpus_per_worker or 1.0,
        gpus_per_worker=args.gpus_per_worker,
        video_retries=3 if args.video_retries is None else args.video_retries,
        retry_failed=args.retry_failed,
    )


def run_library_command(args: argparse.Namespace, parser: argparse.ArgumentParser, options: CaptionOptions) -> int:
    """Run library mode; returns the exit code (0 all ok, 3 any failed, 2 bad input or an unwritable
    output, 130 Ctrl-C, 143 SIGTERM)."""
    from tqdm import tqdm

    from videocaption.library.ray_runner import run_library, worker_shares

    check_library_arguments(args, parser)
    config = library_config(args, parser)
    counts = {OK: 0, FAILED: 0, "frames": 0}
    bar = tqdm(unit="video", desc="videos", disable=None, dynamic_ncols=True, file=sys.stderr)

    def on_row(row: ManifestRow, _left: int) -> None:
        bar.set_description("videos", refresh=False)
        counts[row.status] = counts.get(row.status, 0) + 1
        counts["frames"] += row.frames_analysed or 0
        bar.set_postfix_str(f"{counts[OK]} ok, {counts[FAILED]} failed, {counts['frames']} frames", refresh=False)
        bar.update(1)
        if row.status == FAILED:
            bar.write(f"failed: {row.error}", file=sys.stderr)

    def on_start(videos: int) -> None:
        bar.reset(total=videos)
        bar.set_description("starting workers")

    try:
        run = run_library(config, options, on_row=on_row, on_start=on_start)
    except CaptionError as error:
        bar.close()
        if os.environ.get("LLM_CAPTION_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    bar.close()
    print(summary_line(run), file=sys.stdout)
    shares = worker_shares(run)
    if shares:
        print(
            "model share of wall time per worker: "
            + ", ".join(f"{worker} {share:.0%}" for worker, share in shares.items())
        )
    print(f"manifest: {config.manifest_path}")
    if run.interrupted:
        print(
            f"interrupted: {len(run.captioned)} videos finished in this run are kept; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return 128 + _stopped_by[0] if _stopped_by else EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if run.any_failed else EXIT_OK


def summary_line(run) -> str:
    """``12 inputs: 10 ok, 1 failed, 1 skipped; 8 captioned in 61.0 s: 7.9 videos/min, 3.1 frames/s``."""
    line = f"{len(run.rows)} inputs: {run.count(OK)} ok, {run.count(FAILED)} failed, {run.count(SKIPPED)} skipped"
    if run.captioned and run.seconds > 0:
        frames = sum(row.frames_analysed or 0 for row in run.captioned)
        line += (
            f"; {len(run.captioned)} captioned in {run.seconds:.1f} s: "
            f"{len(run.captioned) / run.seconds * 60:.1f} videos/min, {frames / run.seconds:.1f} frames/s"
        )
    return line


def single_input(values: list[str], parser: argparse.ArgumentParser, default: str) -> str:
    """The one VIDEO of single-video mode (``default`` when none is given)."""
    if len(values) > 1:
        parser.error(f"{len(values)} inputs given: several inputs need --workers N or --ray-address ADDR")
    return values[0] if values else default
