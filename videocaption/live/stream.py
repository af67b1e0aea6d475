"""Reading a live input: one BMF decode graph per connection, a stream clock, and the frames
waiting for the model (the newest win).

The reader's thread decides on each frame with the run's sampler
(:meth:`videocaption.captioning.captioner.Captioner.decide`): only kept frames are converted and
queued, with their decision, and adaptive sampling's skipped near-duplicates as markers without
a picture. With ``transcribe`` the connection's graph also delivers the audio, resampled to
16 kHz mono float as the file graph does (:mod:`videocaption.graph.build`).

:mod:`videocaption.live.captioner` supervises these: it opens a :class:`Connection`, watches it, and
reconnects when it ends, fails or stalls.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from videocaption.audio.samples import SAMPLE_RATE
from videocaption.graph.build import decoder_options
from videocaption.sampling.samplers import Decision

# Protocols that bind a local port: a reader stuck in them keeps the port, and the next
# connection could not bind it. FFmpeg is told to give up itself after stall_timeout instead.
SELF_TIMED_SCHEMES = ("udp://", "rtp://")
# With FFmpeg timing the reads, the stall watch waits this much longer before it steps in.
STALL_GRACE_S = 5.0
# Reading video and audio, the reader looks at both outputs this often when neither has a packet.
POLL_OUTPUTS_S = 0.005
# Audio gaps shorter than this (timestamp jitter) are not filled with silence.
AUDIO_GAP_TOLERANCE_S = 0.05
SILENCE_CHUNK = 10 * SAMPLE_RATE  # samples of silence given at once for a longer gap


@dataclass(frozen=True)
class LiveFrame:
    """A sampled frame of the stream and when it arrived (its decoded picture reached Python)."""

    image: Image.Image | None  # None for a skipped near-duplicate (a marker)
    stream_time: float  # seconds on the run's stream clock
    arrived: float  # time.time() at arrival
    decision: Decision | None = None  # the sampler's; None: kept, as uniform sampling keeps it

    @property
    def skipped(self) -> bool:
        """A near-duplicate that adaptive sampling skips: counted in its batch, not described."""
        return self.decision is not None and self.decision.skipped


class LatestFrames:
    """Sampled frames waiting for the model: at most ``capacity``, the newest win.

    When a frame arrives and the buffer is full, the oldest waiting frame is dropped and
    counted: a live caption of what happened a minute ago is worth less than one of now, and an
    unbounded queue would grow for as long as the model is slower than the stream.

    Skipped near-duplicates (markers, :attr:`LiveFrame.skipped`) wait in order between the
    frames but do not count; those right after a dropped frame go with it. A dropped frame that
    followed a cut hands the cut on to the next frame, so its batch still starts a new shot.
    """

    def __init__(self, capacity: int) -> None:
        self._frames: collections.deque[LiveFrame] = collections.deque()
        self._capacity = capacity
        self._kept = 0  # waiting frames that are not markers
        self._ready = threading.Condition()
        self._closed = False
        self._drain = True
        self.dropped = 0

    def put(self, frame: LiveFrame) -> None:
        with self._ready:
            if not frame.skipped:
                if self._kept >= self._capacity and self._drop_oldest():
                    frame = _after_cut(frame)
                self._kept += 1
            self._frames.append(frame)
            self._ready.notify()

    def _drop_oldest(self) -> bool:
        """Drop the oldest frame and its markers; True when its cut passes to the frame arriving."""
        markers = []
        while self._frames[0].skipped:  # they follow a frame already taken: they stay
            markers.append(self._frames.popleft())
        dropped = self._frames.popleft()
        self._kept -= 1
        self.dropped += 1
        while self._frames and self._frames[0].skipped:
            self._frames.popleft()
        cut = dropped.decision is not None and dropped.decision.new_shot
        if cut and self._frames:  # the next waiting frame (a kept one: its markers are gone) starts the shot
            self._frames[0], cut = _after_cut(self._frames[0]), False
        self._frames.extendleft(reversed(markers))
        return cut

    def take(self, count: int, timeout: float | None = None) -> list[LiveFrame]:
        """The ``count`` oldest waiting frames (and the markers before them), blocking until
        there are that many or ``timeout`` s passed (then []); after :meth:`close`, what is left
        (fewer, or none when not draining): [] then means the end (see :attr:`ended`)."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._kept >= count or self._closed, timeout):
                return []
            if self._closed and not self._drain:
                return []
            taken: list[LiveFrame] = []
            while self._frames and (count > 0 or not self._kept):  # the last frame's markers go with it
                frame = self._frames.popleft()
                taken.append(frame)
                if not frame.skipped:
                    self._kept -= 1
                    count -= 1
            return taken

    @property
    def ended(self) -> bool:
        """Closed, and nothing left to take."""
        with self._ready:
            return self._closed and (not self._drain or not self._frames)

    def close(self, drain: bool) -> None:
        """No more frames will come; ``drain``: the ones waiting are still described."""
        with self._ready:
            self._closed, self._drain = True, drain
            self._ready.notify_all()

    def __len__(self) -> int:
        """Waiting frames, markers not counted."""
        return self._kept


class AudioTrack:
    """Every connection's audio as one continuous track on the stream clock.

    The speech detector counts samples, not timestamps (a later piece is taken to follow on):
    a reconnection's gap is given to it as silence, and audio heard twice (a reread growing
    file) is cut.
    """

    def __init__(self) -> None:
        self.end: float | None = None  # stream time where the track ends so far

    def pieces(self, samples: np.ndarray, start: float) -> Iterator[tuple[np.ndarray, float]]:
        """(samples, start) to give the detector for audio read at ``start``, in order."""
        if self.end is not None:
            gap = start - self.end
            if gap < 0:
                samples, start = samples[round(-gap * SAMPLE_RATE) :], self.end
            elif gap > AUDIO_GAP_TOLERANCE_S:
                total = round(gap * SAMPLE_RATE)
                for offset in range(0, total, SILENCE_CHUNK):
                    yield (
                        np.zeros(min(SILENCE_CHUNK, total - offset), dtype=np.float32),
                        self.end + offset / SAMPLE_RATE,
                    )
        if len(samples):
            self.end = start + len(samples) / SAMPLE_RATE
            yield samples, start


def _after_cut(frame: LiveFrame) -> LiveFrame:
    """The frame as the first kept one after a cut (its decision's ``new_shot`` set)."""
    if frame.decision is None:
        return frame
    return dataclasses.replace(frame, decision=dataclasses.replace(frame.decision, new_shot=True))


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

    def audio_time(self, pts_seconds: float) -> float | None:
        """Audio's time on the run's clock (it shares its connection's origin with the video);
        None on a reconnection until its first video frame has placed the connection."""
        if self._new_connection and self._last is not None:
            return None
        return self._offset + pts_seconds


class Connection:
    """One attempt at reading the stream: a BMF decode graph run as a generator on its own thread.

    A connection that ends, fails or stalls is abandoned, never joined: BMF's reader may stay
    blocked in FFmpeg. Its graph is kept referenced (freeing a graph whose threads still run
    crashes the process) and force-closed on another thread.
    """

    _abandoned: list[Any] = []

    def __init__(
        self,
        url: str,
        on_frame: Callable[[Any, Any], bool],
        start_time: float | None = None,
        *,
        on_audio: Callable[[Any, Any], None] | None = None,
        on_no_audio: Callable[[], None] | None = None,
    ) -> None:
        """``on_frame(packet, frame)`` gets each video frame; with ``on_audio`` the audio is read
        too (``on_audio(packet, frame)``), and ``on_no_audio()`` is called when the stream has none."""
        self.url = url
        self.start_time = start_time
        self.error: BaseException | None = None
        self.frames = 0  # new frames read (on_frame returned True)
        self.audio_frames = 0
        self.started = time.monotonic()
        self.last_frame = self.started
        self.done = threading.Event()
        self._on_frame = on_frame
        self._on_audio = on_audio
        self._on_no_audio = on_no_audio
        self._graph = None
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._read, name="live-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        from bmf import AudioFrame, Timestamp, VideoFrame, graph

        try:
            self._graph = graph()
            options = decoder_options(self.url)
            if self.start_time:
                options["start_time"] = self.start_time
            decoded = self._graph.decode(options)
            outputs = [_graph_output(self._graph, decoded["video"])]  # first: the decoder's output 0 is video
            if self._on_audio is not None:  # as the VAD and the recogniser take it: 16 kHz mono float
                outputs.append(
                    _graph_output(
                        self._graph,
                        decoded["audio"]
                        .ff_filter("aresample", str(SAMPLE_RATE))
                        .ff_filter("aformat", sample_fmts="flt", channel_layouts="mono"),
                    )
                )
            video_ended = False
            for index, packet in _run_outputs(self._graph, outputs, self._abandon):
                if self._abandon.is_set():
                    break
                if packet.timestamp == Timestamp.EOF:
                    video_ended = video_ended or index == 0
                    if index == 1 and not self.audio_frames and not video_ended and self._on_no_audio:
                        self._on_no_audio()
                elif index == 0 and packet.is_(VideoFrame):
                    self.last_frame = time.monotonic()
                    self.frames += self._on_frame(packet, packet.get(VideoFrame))
                elif index == 1 and packet.is_(AudioFrame):
                    self.audio_frames += 1
                    self._on_audio(packet, packet.get(AudioFrame))
        except Exception as error:  # noqa: BLE001 - a refused connection, an undecodable stream: the supervisor decides
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


def _graph_output(graph, stream):
    """Make ``stream`` an output of ``graph`` (what BMF's ``stream.start()`` does for one stream).

    A decoder numbers its outputs in the order their edges are made: the video's must come first.
    """
    from bmf.builder.bmf_node import BmfEdge
    from bmf.builder.bmf_stream import BmfStream

    graph.output_streams_.append(stream)
    stream.get_node().add_outgoing_edge(BmfEdge(stream, BmfStream(stream.get_name(), None, 0)))
    return stream


def _run_outputs(graph, outputs: list, abandoned: threading.Event) -> Iterator[tuple[int, Any]]:
    """Run ``graph`` in generator mode over several outputs: (output index, packet) as they come,
    each output's EOF packet included, until every output ended or ``abandoned`` is set.

    BMF's own generator (``stream.start()``) reads one output; this is it for several, looking
    at each in turn without blocking (one left: blocking, as BMF's does).
    """
    from bmf import Timestamp
    from bmf.builder.bmf_graph import GraphMode
    from bmf.lib._bmf import engine

    graph.mode = GraphMode.GENERATOR
    graph.graph_config_, graph.pre_module = graph.generate_graph_config()
    graph.exec_graph_ = engine.Graph(graph.graph_config_.dump(), False, True)
    graph.exec_graph_.start()
    running = {index: stream.get_name() for index, stream in enumerate(outputs)}
    while running and not abandoned.is_set():
        polled = False
        for index, name in list(running.items()):
            packet = graph.exec_graph_.poll_output_stream_packet(name, len(running) == 1)
            if packet is None or not packet.defined():
                continue
            polled = True
            if packet.timestamp == Timestamp.EOF:
                del running[index]
            yield index, packet
        if not polled:
            time.sleep(POLL_OUTPUTS_S)
    if not running:  # ended: let it go (an abandoned graph is force-closed by abandon())
        graph.exec_graph_.close()


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
