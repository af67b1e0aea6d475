"""Live streams: caption a feed as it plays, for hours, through drops, until it is stopped.

A live input (an ``rtsp``/``rtmp``/``srt``/``udp``/``tcp`` URL, an HLS playlist, or a growing
file with ``live``) has no end: the run writes as it goes and stopping it is its normal end.
Live mode is a frame source and a sink around the same
:class:`~videocaption.captioning.captioner.Captioner` that files use (sampling, batching,
describing with split-retry, speech, summaries, title, the result):

- **Reading** (:mod:`videocaption.live.stream`): one BMF decode graph per connection
  (:class:`Connection`), run as a generator on its own thread. When it ends (the stream
  dropped), fails (refused) or delivers nothing for ``stall_timeout`` seconds, it is abandoned
  and a new one is made after a back-off (``reconnect`` attempts, ``reconnect_delay`` doubling
  up to :data:`MAX_RECONNECT_DELAY_S`). With ``transcribe`` it reads the audio too.
- **Sampling**: the captioner's sampler (``uniform`` or ``adaptive``) decides on the reader's
  thread, on one stream clock that keeps going up across reconnections (:class:`StreamClock`).
- **Falling behind**: kept frames wait in :class:`LatestFrames`, which holds at most
  ``pending_frames``; when the model is slower than the stream, the oldest are dropped (and
  counted), so memory stays flat and what is described is the newest.
- **Writing as it happens** (:class:`LiveRun`, on its own thread): frames go to the captioner
  when the model has room for a batch; each described batch becomes a JSONL record, the
  subtitles are rewritten atomically, a ``summary_every`` window is summarised; at the end
  (stream over, Ctrl-C or SIGTERM) the captioner's final summary, title and result.json.

A live run keeps no checkpoint and does not ``resume``: a stream cannot be replayed.
"""

from __future__ import annotations

import collections
import datetime
import gc
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from videocaption.audio import audio_frame_samples
from videocaption.captioning.captioner import Captioner
from videocaption.errors import BackendError, CaptionError, OutputError, VideoInputError
from videocaption.graph.frames import frame_thumbnail, frame_timestamp, video_frame_to_image
from videocaption.graph.runner import keep_python_signal_handlers
from videocaption.live.stream import (
    STALL_GRACE_S,
    AudioTrack,
    Connection,
    LatestFrames,
    LiveFrame,
    StreamClock,
    connection_failure,
    read_url,
)
from videocaption.media.probe import check_readable, is_live_url, is_url
from videocaption.options import CaptionOptions, options_changed, options_with_role
from videocaption.outputs.files import check_output_path
from videocaption.outputs.writers import JsonlWriter, output_paths, write_outputs
from videocaption.result import BatchCaption, CaptionResult
from videocaption.sampling.samplers import Decision, Thumbnail

log = logging.getLogger("llm_caption")

MAX_RECONNECT_DELAY_S = 30.0
POLL_S = 0.1  # how often the supervising loop looks at the connection and the signals


def is_live_input(video: str | os.PathLike, live: bool = False) -> bool:
    """Whether ``video`` is captioned as a live stream: a live URL, or anything with ``live``."""
    return live or is_live_url(video)


def live_options_given(options: CaptionOptions) -> list[str]:
    """The live-only options set to something other than their default (a file run refuses them)."""
    return options_changed(options, options_with_role("live_only"))


def wall_time(seconds: float | None = None) -> str:
    """A wall-clock time as ISO 8601 in UTC, to the millisecond (``2026-11-30T21:04:05.123Z``)."""
    moment = datetime.datetime.fromtimestamp(time.time() if seconds is None else seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LiveRun:
    """The model's side of a live run: frames from :class:`LatestFrames` into the captioner,
    records out as batches are described.

    Args:
        source: the input, as given (recorded in the result).
        options: validated options (``jsonl_path``, ``summary_every``, subtitles, ...).
        frames: where the reader puts kept frames.
        stop: ends the run (as a signal does), when the JSONL output can no longer be written.

    A model server that fails does not end the run: the batch is recorded with its ``error``
    (as a file's failed batch is) and the stream goes on; a summary or title it could not make
    is left empty, with a warning.
    """

    def __init__(
        self,
        source: str,
        options: CaptionOptions,
        frames: LatestFrames,
        model=None,
        stop: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.source = source
        self.options = options
        self.frames = frames
        self.captioner = Captioner(options, model, checkpoint=False, record_backend_errors=True)
        self.output_failure: OutputError | None = None  # the JSONL output failed: the run was ended
        self._stop = stop
        self.model = self.captioner.model
        self.batches: list[BatchCaption] = []
        self.summaries: list[dict[str, Any]] = []
        self.reconnects = 0
        self.failure: BaseException | None = None
        self._arrivals: collections.deque[float] = collections.deque()  # of the frames added, in order
        self._audio: collections.deque[tuple[np.ndarray, float] | None] = collections.deque()  # None: no audio
        self._track = AudioTrack()
        self._window_start = 0  # index of the first batch not yet in a window summary
        self._next_summary = options.summary_every
        self._jsonl = JsonlWriter(options.jsonl_path) if options.jsonl_path else None
        self._worker = threading.Thread(target=self._work, name="live-model", daemon=True)

    def start(self) -> None:
        self._record(
            {
                "type": "start",
                "input": self.source,
                "model": self.model.name,
                "fps": self.options.fps,
                "batch_size": self.options.batch_size,
            }
        )
        self._worker.start()

    def join(self, timeout: float | None = None) -> None:
        self._worker.join(timeout)

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    # -- the reader's side (its thread) -----------------------------------------------------

    def decide(self, stream_time: float, thumbnail: Thumbnail) -> Decision:
        """The captioner's sampling decision on a frame, made as it is read."""
        return self.captioner.decide(stream_time, thumbnail)

    def hear(self, samples: np.ndarray | None, start_time: float = 0.0) -> None:
        """16 kHz mono samples from ``start_time`` on the stream clock; None: the stream has no audio."""
        self._audio.append(None if samples is None else (samples, start_time))

    # -- the model's side (this run's thread) -----------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                self._feed_audio()
                self._described(self.captioner.take_described())
                if not self.captioner.wait_for_room(POLL_S):  # frames wait where the newest win
                    continue
                taken = self.frames.take(1, timeout=POLL_S)
                if not taken and self.frames.ended:
                    break
                for frame in taken:
                    self._add(frame)
            self._feed_audio()
            self._described(self.captioner.finish_batches())
        except BaseException as error:  # noqa: BLE001 - the supervisor ends the run with it
            self.failure = error

    def _add(self, frame: LiveFrame) -> None:
        if frame.decision is not None:
            self.captioner.follow(frame.decision, frame.stream_time)
        if frame.skipped:
            return
        self._arrivals.append(frame.arrived)
        self.captioner.add(frame.image, frame.stream_time)

    def _feed_audio(self) -> None:
        """Give the captioner the audio read so far, as one track (:class:`AudioTrack`)."""
        while self._audio:
            piece = self._audio.popleft()
            if piece is None:
                self.captioner.end_audio("transcribe: no audio stream; captioning the frames only")
                continue
            for samples, start in self._track.pieces(*piece):
                self.captioner.add_audio(samples, start)

    def _described(self, captions: list[BatchCaption]) -> None:
        """Everything that follows a described batch, at once: its record, the subtitles, a summary."""
        for caption in captions:
            self.batches.append(caption)
            arrived = [self._arrivals.popleft() for _ in range(caption.frames)]
            now = time.time()
            self._record(
                {
                    "type": "batch",
                    **caption.to_dict(),
                    "arrived": wall_time(arrived[-1]),
                    "latency": round(now - arrived[-1], 3),
                    "latency_first_frame": round(now - arrived[0], 3),
                    "dropped_frames": self.frames.dropped,
                }
            )
            self._write_subtitles()
            # A batch covers its stream up to one sampling interval after its last frame (as its cue
            # does): a window is complete once a batch reaches its end.
            covered = caption.end_time + 1.0 / self.options.fps
            if self._next_summary is not None and covered >= self._next_summary - 1e-6:
                self._window_summary()
                every = self.options.summary_every
                self._next_summary = (math.floor(covered / every + 1e-6) + 1) * every

    def _window_summary(self) -> None:
        window = self.batches[self._window_start :]
        self._window_start = len(self.batches)
        failure = None
        try:
            summary, _ = self.captioner.summarize(window)
        except BackendError as error:
            log.warning("the window summary could not be made (%s); the stream goes on", error)
            summary, failure = "", f"BackendError: {error}"
        record = {
            "type": "summary",
            "scope": "window",
            "start_time": round(window[0].start_time, 6),
            "end_time": round(window[-1].end_time, 6),
            "batches": len(window),
            "summary": summary,
            **({"error": failure} if failure else {}),
        }
        self.summaries.append(record)
        self._record(record)
        if self.options.summary_all and failure is None:
            try:
                summary, rounds = self.captioner.summarize(self.batches)
            except BackendError as error:
                log.warning("the summary so far could not be made (%s); the stream goes on", error)
                return
            self._record(
                {
                    "type": "summary",
                    "scope": "all",
                    "start_time": round(self.batches[0].start_time, 6),
                    "end_time": round(self.batches[-1].end_time, 6),
                    "batches": len(self.batches),
                    "summary": summary,
                    "summary_rounds": rounds,
                }
            )

    def _write_subtitles(self) -> None:
        """Rewrite the subtitle files and the report with every batch so far, atomically: a
        player or a reader always finds a whole, valid file (result.json waits for the end)."""
        if self.options.srt_path or self.options.vtt_path or self.options.report_path:
            write_outputs(
                self.captioner.snapshot(),
                self.options,
                thumbnails=self.captioner.thumbnails,
                video_name=self.source,
                partial=True,
                result_file=False,
            )

    def finish(self, ended_by: str) -> CaptionResult:
        """The final summary and title, the final record, and result.json (with the subtitles)."""
        live = {
            "input": self.source,
            "dropped_frames": self.frames.dropped,
            "reconnects": self.reconnects,
            "summaries": self.summaries,
            "ended_by": ended_by,
        }
        result = self.captioner.finish(
            lambda result: write_outputs(
                result, self.options, thumbnails=self.captioner.thumbnails, video_name=self.source
            ),
            extra={"live": live},
            allow_empty=True,
        )
        self._record(
            {
                "type": "final",
                "video_title": result.video_title,
                "summary": result.summary,
                "summary_rounds": result.summary_rounds,
                "frames_analysed": result.frames_analysed,
                "batches": len(result.batches),
                "dropped_frames": self.frames.dropped,
                "reconnects": self.reconnects,
                "ended_by": ended_by,
            }
        )
        if self._jsonl is not None:
            self._jsonl.close()
        return result

    def _record(self, record: dict[str, Any]) -> None:
        """Append a record; when that fails (a full disk, a reader that went away), end the run
        as a signal does, so that result.json is still written where it can be."""
        if self._jsonl is None:
            return
        try:
            self._jsonl.write({**record, "wall_time": wall_time()})
        except OutputError as error:
            self._jsonl.close()
            self._jsonl = None
            self.output_failure = error
            reason = (
                "the JSONL reader closed the pipe"
                if isinstance(error.__cause__, BrokenPipeError)
                else f"the JSONL output failed ({error})"
            )
            log.warning("%s; ending the run", reason)
            self._stop(reason)

    @property
    def reader_went_away(self) -> bool:
        """The JSONL output was a pipe whose reader closed it (``--jsonl - | head -1``)."""
        return self.output_failure is not None and isinstance(self.output_failure.__cause__, BrokenPipeError)


class LiveCaptioner:
    """Reads a live input and captions it until it ends for good or :meth:`stop` is called.

    Args:
        source: a live URL, or a growing file.
        options: validated options.

    Raises:
        OutputError: an output cannot be written (before anything is read).
    """

    def __init__(self, source: str | os.PathLike, options: CaptionOptions, model=None) -> None:
        self.source = os.fspath(source)
        self.options = options
        for path in output_paths(options):
            check_output_path(path)
        self._growing_file = not is_url(self.source)
        if self._growing_file and not Path(self.source).is_file():
            check_readable(Path(self.source))  # says why (missing, a directory, a pipe); a growing file may be empty
        self.frames = LatestFrames(options.pending_frames)
        self.run = LiveRun(self.source, options, self.frames, model, stop=self.stop)
        self._clock = StreamClock(options.fps, same_timeline=self._growing_file)
        self._stop: str | None = None
        self._ever_read = False
        self._last_new_frame = time.monotonic()

    def stop(self, reason: str) -> None:
        """End the run at the next look (from a signal handler: it only sets a flag)."""
        self._stop = self._stop or reason

    def caption(self) -> CaptionResult:
        """Read and caption until the stream is gone for good or :meth:`stop`; returns the result.

        Raises:
            VideoInputError: the stream could never be read (after the reconnect attempts).
        """
        self.run.start()
        try:
            ended_by = self._supervise()
        except BaseException:
            self.frames.close(drain=False)  # the model's thread ends too
            raise
        self.frames.close(drain=self._stop is None)
        while self.run.alive:  # the model call in progress finishes; a second signal exits at once
            keep_python_signal_handlers()
            self.run.join(POLL_S)
        if self.run.failure is not None:
            raise self.run.failure
        return self.run.finish(ended_by)

    def _supervise(self) -> str:
        """Keep a connection open, reconnecting with back-off; returns why the reading ended."""
        attempts = 0  # reconnect attempts since the last connection that delivered a new frame
        while True:
            url, self_timed = read_url(self.source, self.options.stall_timeout)
            connection = Connection(
                url,
                self._on_frame,
                self._clock.resume_at,
                **(
                    {"on_audio": self._on_audio, "on_no_audio": lambda: self.run.hear(None)}
                    if self.options.transcribe
                    else {}
                ),
            )
            stalled = self._watch(connection, self.options.stall_timeout + (STALL_GRACE_S if self_timed else 0))
            connection.abandon()
            if self._stop is not None:
                return self._stop
            if self.run.failure is not None:
                raise self.run.failure
            if self._growing_file and self._ever_read:
                # End of what was written so far: look again soon, until nothing new comes for stall_timeout.
                if time.monotonic() - self._last_new_frame > self.options.stall_timeout:
                    return f"the file stopped growing (no new frame for {self.options.stall_timeout:g} s)"
                if not self._sleep(self.options.reconnect_delay):
                    return self._stop
                self._clock.reconnected()
                continue
            attempts = 0 if connection.frames else attempts
            # A UDP stream has no end: its connection ends when FFmpeg's read times out (EOF, or EIO
            # when nothing came at all).
            timed_out = stalled or (
                self_timed and (connection.error is None or "Input/output error" in str(connection.error))
            )
            reason = f"no frame for {self.options.stall_timeout:g} s" if timed_out else connection_failure(connection)
            if attempts >= self.options.reconnect:
                tried = f" after {attempts} reconnect attempts" if attempts else ""
                if not self._ever_read:
                    raise VideoInputError(f"{self.source}: cannot be read ({reason}){tried}")
                log.warning("%s: %s; ending the run%s", self.source, reason, tried)
                return f"{reason}{tried}"
            attempts += 1
            delay = min(self.options.reconnect_delay * 2 ** (attempts - 1), MAX_RECONNECT_DELAY_S)
            log.warning(
                "%s: %s; reconnecting in %g s (attempt %d of %d)",
                self.source,
                reason,
                delay,
                attempts,
                self.options.reconnect,
            )
            if not self._sleep(delay):
                return self._stop
            self.run.reconnects += 1
            self._clock.reconnected()

    def _watch(self, connection: Connection, stall_after: float) -> bool:
        """Wait until the connection ends (False), stalls (True), or the run is stopped."""
        while not connection.done.wait(POLL_S):
            keep_python_signal_handlers()
            if self._stop is not None or self.run.failure is not None:
                return False
            if connection.idle_seconds() > stall_after:
                return True
        return False

    def _sleep(self, seconds: float) -> bool:
        """Sleep, looking at the stop flag; False when stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            keep_python_signal_handlers()
            if self._stop is not None:
                return False
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return self._stop is None

    def _on_frame(self, packet, frame) -> bool:
        """On the reader's thread: sample (the captioner's sampler decides), convert what is kept,
        hand it to the model's side.

        Returns whether the frame was new (not one of a reread file's frames already seen)."""
        arrived = time.time()
        stream_time = self._clock.stream_time(frame_timestamp(packet, frame), arrived)
        if stream_time is None:
            return False
        self._ever_read = True
        self._last_new_frame = time.monotonic()
        decision = self.run.decide(stream_time, lambda: frame_thumbnail(frame))
        if decision.keep or decision.skipped:
            image = video_frame_to_image(frame) if decision.keep else None
            self.frames.put(LiveFrame(image=image, stream_time=stream_time, arrived=arrived, decision=decision))
        return True

    def _on_audio(self, packet, frame) -> None:
        """On the reader's thread: the connection's audio, placed on the stream clock."""
        start = self._clock.audio_time(frame_timestamp(packet, frame))
        if start is None:  # a reconnection not placed yet: its first video frame places it
            return
        try:
            samples = audio_frame_samples(frame)
        except Exception as error:  # noqa: BLE001 - a damaged frame costs its samples, not the run
            log.warning("skipping an audio frame that cannot be read (%s)", error)
            return
        self.run.hear(samples, start)


def command(source: str, options: CaptionOptions) -> int:
    """The CLI's live mode: caption until the stream is over or Ctrl-C / SIGTERM; exit 0.

    A JSONL output that fails ends the run as a stop does (result.json is still written): a
    reader that closed the pipe (``--jsonl - | head -1``) is a normal end, exit 0; any other
    failure (a full disk) is one ``error:`` line and exit 2. A batch that could not be described
    (a server that failed, after its retries) makes it 3, as for a file.

    The first Ctrl-C or SIGTERM ends the run normally (a live stream has no end: stopping it is
    its end): the model call in progress finishes, then the final summary and result.json are
    written. A second one exits at once (128 + its number); the JSONL and subtitles written so
    far stay whole.
    """
    try:
        captioner = LiveCaptioner(source, options)
    except CaptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, lambda number, _: os._exit(128 + number))
        captioner.stop("SIGTERM" if signum == signal.SIGTERM else "SIGINT")

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = captioner.caption()
    except CaptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: one line, unless asked for the traceback
        if os.environ.get("LLM_CAPTION_DEBUG"):
            raise
        reason = (str(error).strip().splitlines() or [""])[0]
        print(
            f"error: unexpected {type(error).__name__}: {reason} (LLM_CAPTION_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        gc.collect()  # free the finished graphs now, while their shutdown log is still hidden
    if captioner.run.reader_went_away and options.jsonl_path == "-":
        # Nothing more can go to that pipe: point stdout at /dev/null, so that Python's last
        # flush at exit does not fail too (a traceback and exit code 120).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    live = result.extra["live"]
    out = sys.stderr if options.jsonl_path == "-" else sys.stdout  # stdout carries the records then
    print(f"Title: {result.video_title}", file=out)
    print(f"Summary: {result.summary}", file=out)
    print(
        f"{result.frames_analysed} frames in {len(result.batches)} batches, {live['dropped_frames']} dropped, "
        f"{live['reconnects']} reconnects; ended by {live['ended_by']}; result written to {options.result_path}",
        file=out,
    )
    if captioner.run.output_failure is not None and not captioner.run.reader_went_away:
        print(f"error: {captioner.run.output_failure}", file=sys.stderr)  # result.json is written
        return 2
    return 3 if any(batch.error for batch in result.batches) else 0  # as for a file: see its `error`
