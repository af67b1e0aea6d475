"""The driver of a library run: plans what is left, hands videos to Ray actors, records rows.

Why actors and not Ray Data: one video is one unit of work that takes seconds to minutes, its
frames never leave the worker (each worker decodes its own files), and every finished video must
become a durable manifest row at once. A small pool of actors, each given one video at a time
through ``ray.wait``, does exactly that: the model stays loaded in each actor, a slow video holds
up no other, and Ray's own actor fault tolerance (``max_restarts``, ``max_task_retries``)
restarts a worker process that died and retries its video there. Ray Data's streaming executor
would add its start-up, block bookkeeping and retry policy for rows that are just two strings.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videocaption.backends.openai_backend import API_KEY_ENV
from videocaption.captioning.checkpoint import finished_result
from videocaption.errors import CaptionError, InvalidOptionError, ModelLoadError, OutputError, VideoInputError
from videocaption.library.inputs import LibraryItem, expand_inputs
from videocaption.library.manifest import FAILED, OK, SKIPPED, Manifest, ManifestRow, check_folder_writable
from videocaption.library.workers import RESULT_NAME, CaptionWorker, result_path, row_from_document
from videocaption.options import CaptionOptions
from videocaption.outputs.report import write_library_index
from videocaption.search.segments import SEGMENTS_NAME, segments_from_result, write_segments

log = logging.getLogger("llm_caption")
# Handed to each worker as an argument of its constructor, when set. Never through Ray's
# ``runtime_env``: Ray writes those variables to runtime_env_agent.log, a file every user can
# read that outlives the run. A small argument travels inline in the actor's creation task, in
# memory, and Ray reuses it when it restarts the actor.
SECRET_ENV = (API_KEY_ENV,)


class RayConnectionError(CaptionError):
    """Ray could not be started or the cluster could not be reached."""


@dataclass(frozen=True)
class LibraryConfig:
    inputs: tuple[str, ...]  # files, folders, @LIST files
    output_dir: Path  # a result folder per video here, named by its key (library/inputs.py)
    manifest_path: Path  # the Parquet manifest; its journal is beside it (.jsonl)
    workers: int | None = None  # actors to start; None: as many as the cluster's resources hold
    ray_address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: start one
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 with a local model on a cluster with GPUs, else 0
    video_retries: int = 3  # retries of a video whose worker process died
    retry_failed: bool = False  # caption again the inputs an earlier run recorded as failed


@dataclass
class LibraryRun:
    """What a run did: every input's row, in input order, and this run's throughput."""

    rows: list[ManifestRow]
    captioned: list[ManifestRow]  # rows workers returned in this run
    seconds: float  # wall time of the captioning part (Ray start-up included)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)

    @property
    def any_failed(self) -> bool:
        return any(row.status == FAILED for row in self.rows)


def plan(
    items: list[LibraryItem], previous: dict[str, ManifestRow], config: LibraryConfig
) -> tuple[dict[str, ManifestRow], list[LibraryItem]]:
    """Split the library into rows already known and videos to caption.

    A video with a complete result keeps the row an earlier run recorded (or one rebuilt from its
    result.json, when the driver died before recording it); a failed one is kept unless
    ``retry_failed``; the rest, including videos with only a checkpoint, are captioned.
    """
    known: dict[str, ManifestRow] = {}
    todo: list[LibraryItem] = []
    # An earlier key two inputs shared (URLs differing only in their query) holds the result of
    # one of them, nobody knows which: neither gets it.
    sharing = Counter(row.key for row in previous.values())
    for item in items:
        before = previous.get(item.source)
        if before is not None and before.key != item.key and item.skip_reason is None:
            before = _moved_to_its_key(item, before, config.output_dir) if sharing[before.key] == 1 else None
        if item.skip_reason is not None:
            known[item.source] = ManifestRow(path=item.source, key=item.key, status=SKIPPED, error=item.skip_reason)
        elif before is not None and before.status == FAILED and not config.retry_failed:
            known[item.source] = before
        elif (result := finished_result(result_path(config.output_dir, item))) is not None:
            if before is not None and before.status == OK:
                known[item.source] = before
            else:
                known[item.source] = row_from_document(item, result)
                if known[item.source].status == FAILED and config.retry_failed:
                    del known[item.source]
                    todo.append(item)
        else:
            todo.append(item)
    return known, todo


def _moved_to_its_key(item: LibraryItem, before: ManifestRow, output_dir: Path) -> ManifestRow | None:
    """An earlier run's row and outputs, moved from the key it had then to the video's key now.

    Keys once depended on the other inputs (their common folder), so an earlier version's
    results lie under other keys: they move once, rather than the video being captioned again.
    Returns None when there is nothing to move (or it cannot be moved): caption it again.
    """
    root = output_dir.resolve()
    old, new = (root / before.key).resolve(), root / item.key
    if not old.is_relative_to(root) or old == root or new.exists() or not old.is_dir():
        return None
    try:
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
    except OSError as error:
        log.warning(
            "%s: cannot move its earlier outputs from %s to %s (%s); captioning it again", item.source, old, new, error
        )
        return None
    return dataclasses.replace(before, key=item.key)


def run_library(
    config: LibraryConfig,
    options: CaptionOptions,
    on_row: Callable[[ManifestRow, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> LibraryRun:
    """Caption every video of the library on Ray; rows are durable as they finish.

    Ctrl-C ends the run early: the finished rows are still written, and the returned run says
    ``interrupted``.

    Args:
        config: inputs, outputs and Ray resources.
        options: captioning options shared by every video (result paths are set per video).
        on_row: called with each row a worker returns and the number of videos still running
            or waiting (the progress bar).
        on_start: called with the number of videos to caption, before Ray starts.

    Raises:
        VideoInputError: an input is missing, or the inputs hold nothing.
        OutputError: the output folder or the manifest cannot be written (checked before any
            video starts; a disk that fills later ends the run, the journal keeping its rows).
        InvalidOptionError: a manifest path ending in .jsonl (its own journal).
        ModelLoadError: a worker could not load the model.
        RayConnectionError: Ray could not be started or reached.
        InvalidOptionError: a local instance has fewer GPUs than the workers ask for.
    """
    manifest = Manifest(config.manifest_path)
    items = expand_inputs(config.inputs, exclude=[config.output_dir, manifest.path, manifest.journal])
    if not items:
        raise VideoInputError(f"{' '.join(config.inputs)}: no files found")
    try:
        check_folder_writable(config.output_dir)
    except OSError as error:
        raise OutputError(f"{config.output_dir}: cannot write results there ({error.strerror or error})") from None
    manifest.check_writable()
    lock = lock_output(config.output_dir)
    try:
        return _run(config, options, manifest, items, on_row, on_start)
    finally:
        lock.close()


def _run(
    config: LibraryConfig,
    options: CaptionOptions,
    manifest: Manifest,
    items: list[LibraryItem],
    on_row: Callable[[ManifestRow, int], None] | None,
    on_start: Callable[[int], None] | None,
) -> LibraryRun:
    previous = manifest.previous_rows()
    known, todo = plan(items, previous, config)
    other_model = sorted(
        {row.model for row in known.values() if row.status == OK and row.model and row.model != options.model}
    )
    if other_model:
        count = sum(row.status == OK and row.model in other_model for row in known.values())
        log.warning(
            "%d finished videos keep results captioned with another model (%s); to caption them "
            "with this one, give another --output",
            count,
            ", ".join(other_model),
        )
    for row in known.values():
        if previous.get(row.path) != row:
            manifest.append(row)
    if on_start is not None:
        on_start(len(todo))
    started = time.perf_counter()
    captioned: list[ManifestRow] = []
    interrupted = False
    try:
        if todo:
            with RaySession(config):
                _caption_all(todo, config, options, manifest, known, captioned, on_row)
    except KeyboardInterrupt:
        interrupted = True  # the videos still running keep their checkpoints for the next run
    finally:
        rows = [known[item.source] for item in items if item.source in known]
        manifest.close()
        manifest.write_parquet(rows)
        write_library_segments(rows, config.output_dir, manifest.path.parent / SEGMENTS_NAME)
        if options.report_path:  # each video's result.html, and one page listing them all
            write_library_index(rows, config.output_dir)
    return LibraryRun(rows, captioned, time.perf_counter() - started, interrupted)


def write_library_segments(rows: list[ManifestRow], output_dir: Path, path: Path) -> Path:
    """The segments table of every ``ok`` row (one row per batch), beside the manifest, atomically."""
    segments = []
    for row in rows:
        if row.status != OK:
            continue
        document = finished_result(output_dir / row.key / RESULT_NAME)
        if document is not None:
            segments.extend(segments_from_result(document, path=row.path, key=row.key))
    return write_segments(segments, path)


LOCK_NAME = ".llm_caption.lock"  # hidden: a walk of the output folder never lists it


def lock_output(folder: Path):
    """Hold the output folder for this run, so that two runs never caption the same videos.

    Two library runs on one output folder would each see the same videos as not done and
    caption every one twice. The lock is an ``flock`` on a file there: the kernel drops it when
    the process ends, however it ends (a killed driver leaves no stale lock). On a network file
    system that does not support ``flock`` the lock may not hold across machines.

    Returns:
        The open lock file; closing it releases the lock.

    Raises:
        OutputError: another run holds it (its pid and host are named).
    """
    import fcntl
    import socket

    handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputError(
            f"{folder}: another library run is writing there ({holder}); wait for it to end, or give another --output"
        ) from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _caption_all(
    todo: list[LibraryItem],
    config: LibraryConfig,
    options: CaptionOptions,
    manifest: Manifest,
    known: dict[str, ManifestRow],
    captioned: list[ManifestRow],
    on_row: Callable[[ManifestRow, int], None] | None,
) -> None:
    import ray

    actors = start_workers(config, options, len(todo))
    pool = _Pool(actors, config)
    waiting = list(reversed(todo))  # popped from the end: input order
    try:
        while waiting or pool.running:
            while waiting and pool.idle:
                pool.submit(waiting.pop())
            for row in pool.wait():
                known[row.path] = row
                captioned.append(row)
                manifest.append(row)
                if on_row is not None:
                    on_row(row, len(waiting) + len(pool.running))
            if waiting and not pool.alive:
                raise RayConnectionError(
                    f"no worker came back within {RECOVERY_TIMEOUT_S:g} s of dying; "
                    f"{len(waiting)} videos were not started (rerun to continue)"
                )
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


RECOVERY_TIMEOUT_S = 600.0  # a restarted worker reloads its model; a node may need replacing


class _Pool:
    """The actors, each given one video at a time.

    A worker that died is restarted by Ray, which retries the video it was captioning there
    (``max_task_retries``). Calls made while it restarts fail at once, so it gets no new
    video until a ``ready`` call answers again.
    """

    def __init__(self, actors: list[Any], config: LibraryConfig) -> None:
        self.idle = list(actors)
        self.config = config
        self.running: dict[Any, tuple[Any, LibraryItem]] = {}  # caption call -> (actor, video)
        self.probes: dict[Any, Any] = {}  # ready call -> restarting actor
        self.restarting: dict[Any, float] = {}  # actor -> when it died

    @property
    def alive(self) -> bool:
        return bool(self.idle or self.running or self.restarting)

    def submit(self, item: LibraryItem) -> None:
        actor = self.idle.pop()
        self.running[actor.caption.remote(item.source, item.key)] = (actor, item)

    def wait(self) -> list[ManifestRow]:
        """Wait for a video or a restarted worker; returns the rows of finished videos."""
        import ray

        for actor in list(self.restarting):
            if not any(probed is actor for probed in self.probes.values()):
                self.probes[actor.ready.remote()] = actor
        done, _ = ray.wait([*self.running, *self.probes], num_returns=1)
        rows = []
        for ref in done:
            if ref in self.probes:
                self._probed(ref)
                continue
            actor, item = self.running.pop(ref)
            try:
                rows.append(ManifestRow.from_dict(ray.get(ref)))
                self.idle.append(actor)
            except ray.exceptions.RayActorError as error:
                rows.append(self._died(item, error))
                self.restarting.setdefault(actor, time.monotonic())
            except ray.exceptions.RayError as error:
                rows.append(
                    ManifestRow(
                        path=item.source, key=item.key, status=FAILED, error=f"{item.source}: {_ray_reason(error)}"
                    )
                )
                self.idle.append(actor)
        return rows

    def _probed(self, ref) -> None:
        import ray

        actor = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            if time.monotonic() - self.restarting[actor] > RECOVERY_TIMEOUT_S:
                del self.restarting[actor]  # given up on
            else:
                time.sleep(0.2)  # still restarting: ask again
            return
        del self.restarting[actor]
        self.idle.append(actor)

    def _died(self, item: LibraryItem, error: Exception) -> ManifestRow:
        attempts = self.config.video_retries + 1
        message = (
            f"{item.source}: its worker process died while captioning it, {attempts} "
            f"attempt{'s' if attempts > 1 else ''} (killed, out of memory, or crashed; "
            f"Ray: {_ray_reason(error)})"
        )
        return ManifestRow(path=item.source, key=item.key, status=FAILED, error=message)


def _ray_reason(error: Exception) -> str:
    """Ray's error in one short line (its messages run over many lines with advice)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def start_workers(config: LibraryConfig, options: CaptionOptions, videos: int) -> list[Any]:
    """Start the actors and wait until each has its model loaded.

    Raises:
        ModelLoadError: a worker could not load the model (the first worker's message).
        InvalidOptionError: a local instance has fewer GPUs than the workers ask for.
    """
    import ray

    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if options.backend != "openai" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    count = max(1, min(config.workers or _workers_that_fit(config.cpus_per_worker, gpus), videos))
    available = ray.cluster_resources().get("GPU", 0)
    if config.ray_address is None and gpus * count > available:
        # A local instance never grows: the workers would wait for GPUs for ever.
        raise InvalidOptionError(
            f"{count} workers x {gpus:g} GPUs need {gpus * count:g} GPUs; "
            f"this machine has {available:g} (--gpus-per-worker, --workers)"
        )
    # The workers import the installed package (pip install . on every node of a cluster); the
    # secrets go to their constructor, never to a runtime_env (see SECRET_ENV).
    secrets = {name: os.environ[name] for name in SECRET_ENV if os.environ.get(name)}
    remote = ray.remote(CaptionWorker).options(
        num_cpus=config.cpus_per_worker,
        num_gpus=gpus,
        # A dead worker process is restarted (for ever) and its video retried video_retries times;
        # a video that kills its worker every time becomes a failed row, the next video goes on.
        max_restarts=-1,
        max_task_retries=config.video_retries,
    )
    worker_options = dataclasses.asdict(options)
    actors = [
        remote.remote(worker_options, str(config.output_dir.resolve()), config.cpus_per_worker, secrets)
        for _ in range(count)
    ]
    for state in ray.get([actor.ready.remote() for actor in actors]):
        if state["load_error"]:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise ModelLoadError(state["load_error"])
    return actors


def _workers_that_fit(cpus_per_worker: float, gpus_per_worker: float) -> int:
    import ray

    resources = ray.cluster_resources()
    fits = math.floor(resources.get("CPU", 1) / cpus_per_worker) if cpus_per_worker else 1
    if gpus_per_worker:
        fits = min(fits, math.floor(resources.get("GPU", 0) / gpus_per_worker))
    return max(1, fits)


class RaySession:
    """Connect to the cluster named by ``ray_address``, or start a quiet local instance.

    A local instance gets as many logical CPUs as the workers ask for (at least the machine's),
    no dashboard, no worker logs on the driver's terminal, and is shut down at the end. An
    instance this process already started (tests) is used as is and left running.
    """

    def __init__(self, config: LibraryConfig) -> None:
        self.config = config
        self.started = False

    def __enter__(self) -> RaySession:
        import ray

        if ray.is_initialized():
            return self
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        handlers = _stop_handlers()
        # ray.init installs a Python SIGTERM handler (sys.exit) before its C++ one: a SIGTERM in
        # between became an ignored SystemExit (the stop lost) or a silent exit 15. Keep ours in
        # place meanwhile, so that a stop while Ray starts is a stop like any other (143).
        ray_utils = importlib.import_module("ray._private.utils")
        set_sigterm_handler = ray_utils.set_sigterm_handler
        if handlers:
            ray_utils.set_sigterm_handler = lambda handler: None
        try:
            if self.config.ray_address:
                check_reachable(self.config.ray_address)
                ray.init(address=self.config.ray_address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                # Ray turns token authentication on for a new local instance and says so; keep
                # it on, without the notice.
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                wanted = math.ceil((self.config.workers or 1) * self.config.cpus_per_worker)
                ray.init(num_cpus=max(os.cpu_count() or 1, wanted), **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = self.config.ray_address or "a local instance"
            raise RayConnectionError(
                f"cannot start or reach Ray ({where}): {' '.join(str(error).split())[:300]}"
            ) from None
        except KeyboardInterrupt:  # stopped while Ray started: leave no half-started instance
            if ray.is_initialized():
                ray.shutdown()
            raise
        finally:
            ray_utils.set_sigterm_handler = set_sigterm_handler
            for signum, handler in handlers.items():  # Ray's C++ SIGTERM handler dumps a stack and aborts
                signal.signal(signum, handler)
        _ray_messages_to_log()
        self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()


def _ray_messages_to_log() -> None:
    """Send the messages Ray's raylet pushes to the driver to our log, one line each (INFO).

    Ray prints them on the driver's stdout (where the summary line goes), several lines each and
    prefixed ``(raylet)``, whatever ``log_to_driver`` says: "Task CaptionWorker.caption failed.
    There are 3 retries remaining..." when a worker is killed or the run is stopped. The rows
    already say what happened; ``--verbose`` shows these lines. Ray has no option for this, so
    its printing function is wrapped (its other output goes through unchanged).
    """
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "llm_caption_wrapped", False):
        return

    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        for line in data.get("lines", []):
            log.info("ray: %s", " ".join(str(line).split()))

    print_to_stdstream.llm_caption_wrapped = True
    ray_worker.print_to_stdstream = print_to_stdstream


def _stop_handlers() -> dict[int, Any]:
    """The Python handlers of SIGINT and SIGTERM, to put back after ``ray.init`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    return {signum: handler for signum, handler in handlers.items() if handler is not None}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once on a ``HOST:PORT`` or ``ray://HOST:PORT`` nothing answers at.

    Ray itself keeps retrying such an address for minutes, logging every attempt.

    Raises:
        ConnectionError: the port refused or did not answer within ``timeout`` seconds.
    """
    import socket
    from urllib.parse import urlsplit

    if address == "auto" or address.startswith("local"):
        return  # Ray finds the cluster this machine runs, or says at once that there is none
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname or not parts.port:
        return
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as error:
        raise ConnectionError(f"nothing answers at {parts.hostname}:{parts.port} ({error.strerror or error})") from None


def worker_shares(run: LibraryRun) -> dict[str, float]:
    """Each worker's model seconds as a share of the run's wall time."""
    model: dict[str, float] = defaultdict(float)
    for row in run.captioned:
        if row.worker:
            model[row.worker] += row.model_seconds or 0.0
    return {worker: seconds / run.seconds for worker, seconds in sorted(model.items())} if run.seconds else {}
