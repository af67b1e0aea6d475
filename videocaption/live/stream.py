"""Reading a live input: one BMF decode graph per connection, a stream clock, and the frames
waiting for the model (the newest win).

:mod:`videocaption.live.captioner` supervises these: it opens a :class:`Connection`, watches it, and
reconnects when it ends, fails or stalls.
"""

from __future__ import annotations

import collections
import gc
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from videocaption.graph.build import decoder_options

# Protocols that bind a local port: a reader stuck in them keeps the port, and the next
# connection could not bind it. FFmpeg is told to give up itself after stall_timeout instead.
SELF_TIMED_SCHEMES = ("udp://", "rtp://")
# With FFmpeg timing the reads, the stall watch waits this much longer before it steps in.
STALL_GRACE_S = 5.0


@dataclass(frozen=True)
class LiveFrame:
    """A sampled frame of the stream and when it arrived (its decoded picture reached Python)."""

    image: Image.Image
    stream_time: float  # seconds on the run's stream clock
    arrived: float  # time.time() at arrival


class LatestFrames:
    """Sampled frames waiting for the model: at most ``capacity``, the newest win.

    When a frame arrives and the buffer is full, the oldest waiting frame is dropped and
    counted: a live caption of what happened a minute ago is worth less than one of now, and an
    unbounded queue would grow for as long as the model is slower than the stream.
    """

    def __init__(self, capacity: int) -> None:
        self._frames: collections.deque[LiveFrame] = collections.deque()
        self._capacity = capacity
        self._ready = threading.Condition()
        self._closed = False
        self._drain = True
        self.dropped = 0

    def put(self, frame: LiveFrame) -> None:
        with self._ready:
            if len(self._frames) >= self._capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._ready.notify()

    def take(self, count: int) -> list[LiveFrame]:
        """The ``count`` oldest waiting frames, blocking until there are that many; after
        :meth:`close`, what is left (fewer, or none when not draining): [] means the end."""
        with self._ready:
            self._ready.wait_for(lambda: len(self._frames) >= count or self._closed)
            if self._closed and not self._drain:
                return []
            return [self._frames.popleft() for _ in range(min(count, len(self._frames)))]

    def close(self, drain: bool) -> None:
        """No more frames will come; ``drain``: the ones waiting are still described."""
        with self._ready:
            self._closed, self._drain = True, drain
            self._ready.notify_all()

    def __len__(self) -> int:
        return len(self._frames)


class StreamClock:
    """One stream time for the whole run, going up across reconnections.

    BMF's decoder starts every connection's timestamps at 0. A reconnected live stream continues
    where the wall clock says it is now (never before the last frame); a growing file is the
    same file again, so its own times hold and frames already seen are skipped.
    """

    def __init__(self, fps: float, same_timeline: bool) -> None:
        self._interval = 1.0 / fps
        self._same_timeline = same_timeline
        self._offset = 0.0
        self._first_arrival: float | None = None
        self._last: float | None = None
        self._new_connection = False

    def reconnected(self) -> None:
        self._new_connection = True

    @property
    def resume_at(self) -> float | None:
        """Where a reread file is opened again (its decoder seeks there and starts its times at 0)."""
        return self._last if self._same_timeline else None

    def stream_time(self, pts_seconds: float, arrived: float) -> float | None:
        """The frame's time on the run's clock; None for a frame already seen (a reread file)."""
        if self._first_arrival is None:
            self._first_arrival = arrived
        if self._same_timeline:
            if self._new_connection:
                self._offset = self._last or 0.0
            if self._last is not None and self._offset + pts_seconds <= self._last:
                self._new_connection = False
                return None
        elif self._new_connection and self._last is not None:
            resumed_at = max(self._last + self._interval, arrived - self._first_arrival)
            self._offset = resumed_at - pts_seconds
        self._new_connection = False
        time_ = self._offset + pts_seconds
        self._last = time_
        return time_


class Connection:
    """One attempt at reading the stream: a BMF decode graph run as a generator on its own thread.

    A connection that ends, fails or stalls is abandoned, never joined: BMF's reader may stay
    blocked in FFmpeg. Its graph is kept referenced (freeing a graph whose threads still run
    crashes the process) and force-closed on another thread.
    """

    _abandoned: list[Any] = []

    def __init__(self, url: str, on_frame: Callable[[Any, Any], bool], start_time: float | None = None) -> None:
        self.url = url
        self.start_time = start_time
        self.error: BaseException | None = None
        self.frames = 0  # new frames read (on_frame returned True)
        self.started = time.monotonic()
        self.last_frame = self.started
        self.done = threading.Event()
        self._on_frame = on_frame
        self._graph = None
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._read, name="live-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        from bmf import Timestamp, VideoFrame, graph

        try:
            self._graph = graph()
            options = decoder_options(self.url)
            if self.start_time:
                options["start_time"] = self.start_time
            for packet in self._graph.decode(options)["video"].start():
                if self._abandon.is_set() or packet.timestamp == Timestamp.EOF:
                    break
                if packet.is_(VideoFrame):
                    self.last_frame = time.monotonic()
                    self.frames += self._on_frame(packet, packet.get(VideoFrame))
        except Exception as error:  # a refused connection, an undecodable stream: the supervisor decides
            self.error = error
        finally:
            self.done.set()

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last_frame

    def abandon(self) -> None:
        """Stop reading: a finished graph is let go, a running one force-closed and kept."""
        self._abandon.set()
        graph, self._graph = self._graph, None
        if graph is None:
            return
        if self.done.is_set():
            # Freed now (BMF's graph and nodes form a cycle only the collector frees): its decoder
            # lets go of the input, so a UDP port can be bound again by the next connection.
            del graph
            gc.collect()
            return
        Connection._abandoned.append(graph)
        threading.Thread(target=_force_close, args=(graph,), name="live-close", daemon=True).start()


def read_url(source: str, stall_timeout: float) -> tuple[str, bool]:
    """The URL a connection opens, and whether FFmpeg times its reads out itself.

    A UDP or RTP URL without a ``timeout`` gets one of ``stall_timeout`` (FFmpeg counts it in
    microseconds), so a stalled stream ends its connection cleanly, letting go of the port.
    Every other URL is given to FFmpeg as it is.
    """
    if not source.lower().startswith(SELF_TIMED_SCHEMES):
        return source, False
    if "timeout=" in source:
        return source, True
    separator = "&" if "?" in source else "?"
    return f"{source}{separator}timeout={round(stall_timeout * 1_000_000)}", True


def _force_close(graph) -> None:
    try:
        graph.force_close()
    except BaseException:  # noqa: BLE001 - the connection is already abandoned
        pass


def connection_failure(connection: Connection) -> str:
    """Why a connection ended, in a few words."""
    if connection.error is not None:
        text = str(connection.error).strip().splitlines()[0] if str(connection.error).strip() else ""
        for marker in ("avformat_open_input failed:", "avformat_find_stream_info failed:"):
            if marker in text:
                return text.split(marker, 1)[1].split(" in function")[0].strip()
        return text[:160] or type(connection.error).__name__
    return "the stream ended"
