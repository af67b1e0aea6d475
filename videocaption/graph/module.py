"""The BMF module behind ``llm_caption.py``: frames in, caption packets and result.json out.

In a user's graph the module writes ``result_path`` (default ``result.json``). Run by
:func:`videocaption.graph.runner.run_caption_graph` (and so by
:func:`videocaption.caption_video`), it also hands its :class:`CaptionResult` to the caller in
memory, through the run's :class:`~videocaption.graph.context.RunContext`, and writes only the
files the caller's options name (none without a ``result_path``).

Streams (fixed positions, so a graph can wire them without guessing):

- input 0: video frames (required); input 1: audio (optional: passed through, and with
  ``transcribe`` heard; the caption graph resamples it to 16 kHz mono first).
- output 0: the input video, packet for packet, when ``pass_through`` is on.
- output 1: captions: one packet per batch as it is described (in video order, timestamped at
  the batch's first frame), then one ``summary`` packet before EOF. Payloads are dicts
  (BMF carries them as JSON); see :func:`batch_payload` and :func:`summary_payload`.
- output 2: the input audio, when ``pass_through`` is on.
"""

from __future__ import annotations

import logging
from typing import Any

from bmf import AudioFrame, Module, Packet, ProcessResult, Timestamp, VideoFrame

from videocaption.audio import audio_frame_samples
from videocaption.captioning.captioner import Captioner
from videocaption.captioning.checkpoint import checkpoint_path
from videocaption.errors import CaptionError
from videocaption.graph.context import RUN_ID_OPTION, context_for
from videocaption.graph.frames import frame_thumbnail, frame_timestamp, video_frame_to_image
from videocaption.options import CaptionOptions
from videocaption.outputs.files import check_output_path
from videocaption.outputs.writers import output_paths, write_outputs
from videocaption.result import BatchCaption, CaptionResult

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

    Options are checked, the output paths tried and the model loaded when the graph is built,
    before any frame is decoded, so a bad option, an output path that is a directory or a
    missing model fails fast with a one-line error.

    The result files are written at end of stream, all together; a graph closed before that
    writes none: what was described is in the checkpoint (``RESULT.partial``, which
    ``resume`` continues from) and was already sent as caption packets.
    """

    def __init__(self, node: int | None = None, option: dict[str, Any] | None = None) -> None:
        self.node = node
        option = dict(option or {})
        # The caller's side of this run (see videocaption.graph.context): its stall watch and progress bar.
        self._run = run = context_for(option.pop(RUN_ID_OPTION, None))
        self.options = run.options if run.options is not None else CaptionOptions.from_mapping(option)
        for path in output_paths(self.options):
            check_output_path(path)
        self._activity = run.activity
        # Loading the model is work, not a stall.
        with self._activity.busy():
            self._captioner = Captioner(self.options, on_progress=run.report)
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
        if AUDIO_IN not in inputs:
            self._captioner.end_audio("transcribe: no audio stream; captioning the frames only")
        for stream_id, packets in inputs.items():
            while not packets.empty():
                packet = packets.get()
                if packet.timestamp == Timestamp.EOF:
                    self._eof_inputs.add(stream_id)
                    if stream_id == AUDIO_IN:
                        self._captioner.end_audio()
                    continue
                if stream_id == VIDEO_IN and packet.is_(VideoFrame):
                    self._caption_frame(packet)
                elif stream_id == AUDIO_IN and self.options.transcribe and packet.is_(AudioFrame):
                    self._hear(packet)
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
        if self._captioner.wants(seconds, lambda: frame_thumbnail(frame)):
            self._captioner.add(video_frame_to_image(frame), seconds)

    def _hear(self, packet) -> None:
        frame = packet.get(AudioFrame)
        try:
            samples = audio_frame_samples(frame)
        except Exception as error:  # noqa: BLE001 - a damaged frame costs its samples, not the run
            log.warning("skipping an audio frame that cannot be read (%s)", error)
            return
        self._captioner.add_audio(samples, frame_timestamp(packet, frame))

    def _finish(self, outputs) -> None:
        self._done = True
        self._emit_captions(outputs, self._captioner.finish_batches())
        result = self._captioner.finish(write=self._write)
        self._run.result = result  # the caller's copy: nothing reads result.json back
        self._put(outputs, CAPTIONS_OUT, Packet(summary_payload(result)))
        for stream_id in outputs:
            outputs[stream_id].put(Packet.generate_eof_packet())

    def _write(self, result: CaptionResult) -> None:
        """Write the result files, unless the caller stopped the run meanwhile (then keep the checkpoint)."""
        with self._activity.writing() as allowed:
            if not allowed:
                raise CaptionError("the run was stopped before its result was written")
            write_outputs(
                result,
                self.options,
                thumbnails=self._captioner.thumbnails,
                video_name=self._run.source,
                poster=self._run.report_poster,
            )

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
        self._captioner = Captioner(self.options, self._captioner.model, on_progress=self._captioner.on_progress)
        self._run.result = None
        self._eof_inputs = set()
        self._done = False

    def close(self) -> None:
        """Called when the graph closes; a run stopped before EOF keeps what was described."""
        self._stop_early()

    def _stop_early(self) -> None:
        """No result for a run that did not reach the end: its checkpoint keeps what was described."""
        if self._done or self._activity.abandoned:  # abandoned: the runner reports it
            return
        self._done = True
        kept = self._captioner.stop()
        if kept and self.options.result_path is not None:
            log.warning(
                "stopped before the end of the video: no result written; %d described batches are kept "
                "in %s (run again with resume to continue)",
                kept,
                checkpoint_path(self.options.result_path),
            )
