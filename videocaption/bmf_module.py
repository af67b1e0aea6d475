"""The BMF module behind ``llm_caption.py``: frames in, caption packets and result.json out.

Streams (fixed positions, so a graph can wire them without guessing):

- input 0: video frames (required); input 1: audio (optional, only passed through).
- output 0: the input video, packet for packet, when ``pass_through`` is on.
- output 1: captions: one packet per batch as it is described (in video order, timestamped at
  the batch's first frame), then one ``summary`` packet before EOF. Payloads are dicts
  (BMF carries them as JSON); see :func:`batch_payload` and :func:`summary_payload`.
- output 2: the input audio, when ``pass_through`` is on.
"""

from __future__ import annotations

import logging
from typing import Any

from bmf import Module, Packet, ProcessResult, Timestamp, VideoFrame

from .frames import frame_timestamp, video_frame_to_image
from .options import CaptionOptions
from .pipeline import Captioner
from .result import BatchCaption, CaptionResult
from .watchdog import activity_for
from .writers import write_outputs

log = logging.getLogger("llm_caption")

VIDEO_IN, AUDIO_IN = 0, 1
VIDEO_OUT, CAPTIONS_OUT, AUDIO_OUT = 0, 1, 2
PASS_THROUGH_OUT = {VIDEO_IN: VIDEO_OUT, AUDIO_IN: AUDIO_OUT}


def batch_payload(caption: BatchCaption) -> dict[str, Any]:
    """The caption packet for one described batch."""
    return {"type": "batch", **caption.to_dict()}


def summary_payload(result: CaptionResult) -> dict[str, Any]:
    """The last caption packet: title and summary of the whole video."""
    return {
        "type": "summary",
        "video_title": result.video_title,
        "summary": result.summary,
        "frames_analysed": result.frames_analysed,
        "batches": len(result.batches),
    }


class CaptionModule(Module):
    """Describes the video on input 0 with a vision-language model (see the module docstring).

    Options are checked and the model is loaded when the graph is built, before any frame is
    decoded, so a bad option or a missing model fails fast with a one-line error.
    """

    def __init__(self, node: int | None = None, option: dict[str, Any] | None = None) -> None:
        self.node = node
        self.options = CaptionOptions.from_mapping(option)
        # The graph runner watches this for stalls; loading the model is work, not a stall.
        self._activity = activity_for(self.options.result_path)
        with self._activity.busy():
            self._captioner = Captioner(self.options)
        # A graph that fails elsewhere (a decoder error) never closes this module: the runner
        # then stops the model thread through the activity.
        self._activity.on_abandon(lambda: self._captioner.abort())
        self._eof_inputs: set[int] = set()
        self._done = False

    def process(self, task) -> int:
        if self._activity.abandoned:  # the runner gave up on a stalled input: wind down quietly
            self._done = True
            task.timestamp = Timestamp.DONE
            return ProcessResult.OK
        with self._activity.busy():
            return self._process(task)

    def _process(self, task) -> int:
        inputs = task.get_inputs()
        outputs = task.get_outputs()
        for stream_id, packets in inputs.items():
            while not packets.empty():
                packet = packets.get()
                if packet.timestamp == Timestamp.EOF:
                    self._eof_inputs.add(stream_id)
                    continue
                if stream_id == VIDEO_IN and packet.is_(VideoFrame):
                    self._caption_frame(packet)
                if self.options.pass_through:
                    self._put(outputs, PASS_THROUGH_OUT.get(stream_id), packet)
        self._emit_captions(outputs, self._captioner.take_described())
        if self._eof_inputs >= set(inputs) and not self._done:
            self._finish(outputs)
            task.timestamp = Timestamp.DONE
        return ProcessResult.OK

    def _caption_frame(self, packet) -> None:
        frame = packet.get(VideoFrame)
        seconds = frame_timestamp(packet, frame)
        if self._captioner.wants(seconds):
            self._captioner.add(video_frame_to_image(frame), seconds)

    def _finish(self, outputs) -> None:
        self._done = True
        self._emit_captions(outputs, self._captioner.finish_batches())
        result = self._captioner.finish()
        write_outputs(result, self.options)
        self._put(outputs, CAPTIONS_OUT, Packet(summary_payload(result)))
        for stream_id in outputs:
            outputs[stream_id].put(Packet.generate_eof_packet())

    def _emit_captions(self, outputs, captions: list[BatchCaption]) -> None:
        for caption in captions:
            packet = Packet(batch_payload(caption))
            packet.timestamp = round(caption.start_time * 1_000_000)
            self._put(outputs, CAPTIONS_OUT, packet)

    @staticmethod
    def _put(outputs, stream_id: int | None, packet) -> None:
        if stream_id is not None and stream_id in outputs:
            outputs[stream_id].put(packet)

    def reset(self) -> None:
        """Start over (BMF calls this when a graph is reset): a fresh run on the same model."""
        self._stop_early()
        self._captioner = Captioner(self.options, self._captioner.model)
        self._eof_inputs = set()
        self._done = False

    def close(self) -> None:
        """Called when the graph closes; a run stopped before EOF keeps what was described."""
        self._stop_early()

    def _stop_early(self) -> None:
        if self._done or self._activity.abandoned:  # abandoned: the checkpoint keeps the work
            return
        self._done = True
        partial = self._captioner.stop()
        if partial.batches:
            log.warning("stopped before the end of the video after %d batches; partial result in %s",
                        len(partial.batches), self.options.result_path)
            write_outputs(partial, self.options)
