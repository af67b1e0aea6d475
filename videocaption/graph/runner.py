"""Running a caption graph: interruptibly, watched for stalls, freed when done."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import traceback
import weakref
from typing import Any

from videocaption.captioning.progress import ProgressCallback
from videocaption.errors import CaptionError, OutputError, VideoInputError
from videocaption.graph.build import build_caption_graph, probe_input
from videocaption.graph.context import RunContext, registered
from videocaption.graph.watchdog import Activity
from videocaption.media.probe import MediaInfo, explain_decoder_error
from videocaption.options import CaptionOptions
from videocaption.outputs.writers import output_paths
from videocaption.result import CaptionResult

log = logging.getLogger("llm_caption")


# Seconds without a decoded frame (module idle) before a run counts as stalled.
DEFAULT_STALL_TIMEOUT_S = 60.0


def wait_for_graph(
    graph,
    node=None,
    *,
    activity: Activity | None = None,
    stall_timeout: float | None = None,
    video_path: str | os.PathLike = "",
) -> None:
    """Run a built graph (when ``node`` is given) and wait for it to finish, interruptibly.

    BMF's ``run`` and ``close`` block in C++ (``run`` already while the decoder opens its input,
    which never returns for a pipe nobody writes), where Python cannot deliver Ctrl-C; doing
    both on a helper thread keeps the main thread in Python, so a KeyboardInterrupt reaches the
    caller at once. A module's exception is re-raised here.

    Raises:
        VideoInputError: ``activity`` showed no progress for ``stall_timeout`` seconds while
            the module was idle: the graph is abandoned (its threads may stay blocked).
    """
    failure: list[BaseException] = []
    # A module-level target, not a closure: a failure's traceback then holds the graph only
    # through frame locals, which run_caption_graph clears so the graph can be freed.
    runner = threading.Thread(target=_run_and_close, args=(graph, node, failure), name="bmf-graph", daemon=True)
    runner.start()
    try:
        while runner.is_alive():
            keep_python_signal_handlers()
            runner.join(timeout=0.2)
            if activity is not None and stall_timeout and activity.idle_seconds() > stall_timeout:
                activity.abandon()
                # force_close waits for the decoder too; do not wait for it here.
                threading.Thread(target=_force_close, args=(graph,), name="bmf-force-close", daemon=True).start()
                raise VideoInputError(
                    f"{video_path}: decoding stalled: no frame in {stall_timeout:g} s "
                    "(an input that stopped delivering data, or a damaged file)"
                )
    except BaseException:
        # Freeing a graph whose engine threads still run crashes the process: keep it alive.
        _ABANDONED_GRAPHS.append(graph)
        raise
    if failure:
        if activity is not None:
            # A node failed (a decoder error): BMF does not close the module, so stop its model
            # thread here; left running, it would abort the process when the interpreter exits.
            activity.abandon()
        raise failure[0]


def _run_and_close(graph, node, failure: list[BaseException]) -> None:
    try:
        if node is not None:
            graph.run(node, is_blocked=False)
        graph.close()
    except BaseException as error:  # noqa: BLE001 - handed to the main thread
        failure.append(error)


def keep_python_signal_handlers() -> None:
    """Take Ctrl-C and SIGTERM back from BMF's engine, which installs its own C handlers when a
    graph starts.

    Its handler quits every graph in the process from inside the signal, racing the module
    and the caller (a crash, a run reported as stalled, a half-written result); Python's
    handlers (KeyboardInterrupt, or whatever the caller installed) run in the main thread
    instead, where the caller handles them.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if handler is not None:  # None: not installed from Python; leave it alone
                signal.signal(signum, handler)


# Graphs left running by an interrupt or a stall; never freed (see wait_for_graph).
_ABANDONED_GRAPHS: list[Any] = []


def _force_close(graph) -> None:
    try:
        graph.force_close()
    except BaseException:  # noqa: BLE001 - the run is already abandoned and reported
        pass


def _explained(error: BaseException, video_path: str | os.PathLike) -> BaseException:
    """A failed run's error in the user's terms: the file named, BMF's decoder errors in one line."""
    if isinstance(error, RuntimeError) and not isinstance(error, CaptionError):
        return explain_decoder_error(video_path, error) or error
    if isinstance(error, VideoInputError) and os.fspath(video_path) not in str(error):
        # The module's own errors ("no video frame could be decoded") do not know the file.
        return VideoInputError(f"{video_path}: {error}")
    return error


def _collect(graph_ref: weakref.ref) -> None:
    """Free a finished graph now: BMF's graph and its nodes reference each other, so only the
    cycle collector frees it. A young-generation pass usually does; a full one costs about
    0.13 s with torch loaded, so it runs only when the graph is still alive after that."""
    for generation in (1, 2):
        if graph_ref() is None:
            return
        gc.collect(generation)


def _check_outputs_are_not_the_input(video_path: str | os.PathLike, options: CaptionOptions) -> None:
    for path in output_paths(options):
        if os.path.exists(path) and os.path.exists(video_path) and os.path.samefile(path, video_path):
            raise OutputError(f"{path}: is the input video; give the result another name")


def run_caption_graph(
    video_path: str | os.PathLike,
    options: CaptionOptions,
    *,
    media: MediaInfo | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT_S,
    on_progress: ProgressCallback | None = None,
    report_poster: bool = False,
) -> CaptionResult:
    """Caption one video through BMF; returns the result the module made, in memory.

    The module writes the files ``options`` names (result_path, srt_path, vtt_path, report_path: none that
    is None) before it hands the result over; nothing is read back.

    Args:
        media: the input's one probe (:func:`videocaption.graph.build.probe_input`); probed
            here when not given. It decides the decode mode and whether audio is read, and its
            ``video_end`` caps the last subtitle cue (unless ``options.video_end`` is set).
        stall_timeout: give up when the decoder delivers nothing for this many seconds while
            the module is idle (model work never counts); None waits forever.
        on_progress: called with each :class:`~videocaption.captioning.progress.Progress` report of the
            run (from BMF's thread).
        report_poster: with ``report_path``, also write the library index's picture of the video.

    Raises:
        VideoInputError: the input is missing or not a video, the decoder could not open it, or
            it stalled.
        OutputError: a result file could not be written (none was, and the checkpoint stays),
            or is the input itself.
        CaptionError: a bad option, a missing model, or a video without frames.
    """
    if media is None:
        media = probe_input(video_path, options)
    _check_outputs_are_not_the_input(video_path, options)
    if media.video_end is not None and options.video_end is None:  # the last subtitle cue ends there
        options = options.replace(video_end=media.video_end)
    run = RunContext(
        on_progress=on_progress, options=options, source=os.fspath(video_path), report_poster=report_poster
    )
    with registered(run) as run_id:
        graph, node = build_caption_graph(video_path, options, run_id, media)
        keep_python_signal_handlers()
        try:
            wait_for_graph(graph, node, activity=run.activity, stall_timeout=stall_timeout, video_path=video_path)
        except BaseException as error:
            if not isinstance(error, Exception):  # Ctrl-C, SIGTERM: the module must write no result now
                run.activity.stop_writes()
            # The traceback holds wait_for_graph's frame and with it the graph: drop those locals so
            # the graph is freed below (its shutdown logging still captured), not at interpreter exit.
            traceback.clear_frames(error.__traceback__)
            explained = _explained(error, video_path)
            if explained is error:
                raise
            raise explained from error
        finally:
            # The engine logs while it shuts down; let that happen now, not at interpreter exit.
            graph_ref = weakref.ref(graph)
            del graph, node
            _collect(graph_ref)
    if run.result is None:
        raise VideoInputError(f"{video_path}: the graph ended without a result")
    return run.result
