"""The captioning pipeline: sampled frames in, a :class:`CaptionResult` out.

:class:`Captioner` is fed frames one at a time (by the BMF module, or by any loop over
frames), groups them into batches, has the model describe the batches on a worker thread
(see :mod:`videocaption.captioning.scheduler`), and at the end summarises the descriptions and titles
the summary. It writes nothing; writers turn its result into files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from videocaption.audio import Transcriber
from videocaption.audio.recognizers import load_recognizer
from videocaption.backends import VisionLanguageModel, load_model
from videocaption.captioning.batching import FrameBatch, FrameBatcher
from videocaption.captioning.checkpoint import Checkpoint, fingerprint
from videocaption.captioning.progress import Progress, ProgressCallback
from videocaption.captioning.scheduler import BatchScheduler
from videocaption.captioning.speech_gate import SpeechGate
from videocaption.captioning.summary import Summarizer, ground
from videocaption.errors import BackendError, CaptionError, InvalidOptionError, VideoInputError
from videocaption.events import batch_schema, events_line, load_schema, parse_events
from videocaption.options import CaptionOptions
from videocaption.outputs.report import Thumbnails
from videocaption.prompts import (
    IMAGE_PLACEHOLDER,
    batch_prompt,
    clean_title,
    events_prompt,
    speech_line,
    title_prompt,
)
from videocaption.result import BatchCaption, CaptionResult
from videocaption.sampling.grid import SampledFrame
from videocaption.sampling.samplers import Decision, Thumbnail, make_sampler
from videocaption.usage import Usage, usage_of

log = logging.getLogger("llm_caption")

# The largest batch size considered when looking for the largest one that fits the context.
MAX_BATCH_SIZE_SEARCHED = 256
# With transcribe: prompt tokens kept for a batch's speech (longer speech is cut to fit).
SPEECH_PROMPT_TOKENS = 160
# With transcribe: seconds of video whose batches may wait for their audio.
MAX_AUDIO_LAG_S = 60.0


def batch_tokens(model: VisionLanguageModel, options: CaptionOptions, num_frames: int) -> int:
    """Worst-case tokens of a batch prompt plus its answer, whatever the frame size."""
    text = batch_prompt(options.prompt, [0.0] * num_frames, time_aware=options.time_aware)
    text_tokens = model.count_tokens(text.replace(IMAGE_PLACEHOLDER, ""))
    # Times in the prompt grow with the video ("1:23.0" vs "0:00.0"): keep a few tokens spare.
    spare = 4 * num_frames + 8 + (SPEECH_PROMPT_TOKENS if options.transcribe else 0)
    return text_tokens + spare + model.max_image_tokens(num_frames) + options.max_new_tokens


def fitting_batch_sizes(model: VisionLanguageModel, options: CaptionOptions) -> list[int]:
    """Every ``batch_size`` (up to MAX_BATCH_SIZE_SEARCHED) whose prompt and answer fit the context.

    Not simply 1..N: with one or two frames a prompt, DeepSeek-VL2 tiles each frame at high
    resolution, so small batches can need more tokens than larger ones.
    """
    return [n for n in range(1, MAX_BATCH_SIZE_SEARCHED + 1) if batch_tokens(model, options, n) <= model.context_length]


def check_batch_fits(model: VisionLanguageModel, options: CaptionOptions) -> None:
    """Refuse a ``batch_size`` whose prompt cannot fit the model's context, before any decoding.

    Raises:
        InvalidOptionError: naming the sizes that fit.
    """
    if options.batch_size + options.max_new_tokens > model.context_length:
        # Every frame takes at least one token: refused without building a prompt of
        # batch_size time labels, which for 10**9 would take minutes and gigabytes.
        needed_text = f"at least {options.batch_size + options.max_new_tokens}"
    else:
        needed = batch_tokens(model, options, options.batch_size)
        if needed <= model.context_length:
            return
        needed_text = f"up to {needed}"
    fitting = fitting_batch_sizes(model, options)
    if not fitting:
        advice = "no batch size fits; lower max_new_tokens or shorten the prompt"
    else:
        advice = f"the largest batch that fits is {max(fitting)}"
        gaps = sorted(set(range(1, max(fitting) + 1)) - set(fitting))
        if gaps:
            advice += (
                f"; {' and '.join(map(str, gaps))} do not: with one or two frames a prompt the "
                "model tiles each frame at high resolution, up to "
                f"{model.max_image_tokens(1)} tokens a frame"
            )
    raise InvalidOptionError(
        f"batch_size {options.batch_size} does not fit the {model.context_length}-token context "
        f"of {model.name}: it needs {needed_text} tokens with max_new_tokens "
        f"{options.max_new_tokens}; {advice}"
    )


def _summary_items(batches: list[BatchCaption]) -> list[tuple[float, float, str]]:
    """What the summary pass reads of each described batch: its span, description, speech and events."""
    return [(b.start_time, b.end_time, b.description + _speech_and_events(b)) for b in batches if b.error is None]


class Captioner:
    """Describes a stream of frames batch by batch, then summarises and titles the video.

    Args:
        options: validated options.
        model: a loaded model; by default the one ``options`` names, shared per process.
        on_progress: called with a :class:`Progress` report as frames arrive and batches finish
            (on the thread that feeds frames), e.g. to draw a progress bar.
        checkpoint: save the described batches beside ``result_path`` as they finish, for
            ``resume``. A live run turns it off: a stream cannot be replayed to resume it.
        record_backend_errors: a model server that fails (:class:`BackendError`, after its
            retries) fails the batch, recorded with its ``error``, and an unmade summary or title
            is left empty, instead of ending the run. A live run turns it on: its stream goes
            on, and what was described must not be lost. A file run ends (its checkpoint
            keeps what was described, for ``resume``).
    """

    def __init__(
        self,
        options: CaptionOptions,
        model: VisionLanguageModel | None = None,
        on_progress: ProgressCallback | None = None,
        *,
        checkpoint: bool = True,
        record_backend_errors: bool = False,
    ) -> None:
        self.options = options
        self._record_backend_errors = record_backend_errors
        self.on_progress = on_progress
        self.model = model if model is not None else load_model(options)
        check_batch_fits(self.model, options)
        self._events_schema = self._check_events(options) if options.events else None
        # A local model takes one call at a time: a live run's window summaries (on the thread
        # feeding frames) wait for the batch being described. A server takes many at once.
        self._model_calls = contextlib.nullcontext() if self.model.concurrent_calls else threading.Lock()
        self._summarize = Summarizer(self.model, options, self._complete)
        self._grounded = Summarizer(self.model, options, self._complete, cite=True)  # the final summary
        self._started = time.perf_counter()
        self._sampler = make_sampler(options)
        self._adaptive = options.sampling == "adaptive"
        self._batcher = FrameBatcher(options.batch_size, hold_full=self._adaptive)
        self._shot: int | None = 0 if self._adaptive else None  # the shot of the next kept frame
        self._new_shot = False  # the next kept frame follows a cut: it starts a batch
        # A server (the openai backend) batches requests itself: keep max_threads of them in
        # flight. A local model is fastest given the waiting batches as one batched call.
        workers = options.batches_in_flight if self.model.concurrent_calls else 1
        self._scheduler = BatchScheduler(self._describe_group, options.batches_in_flight, workers=workers)
        self._speech_gate = self._speech_gate_for(options) if options.transcribe else None
        self._speech: dict[int, str] = {}  # batch id -> what is said during its span
        self._checkpoint = Checkpoint(options.result_path) if checkpoint else None
        # With a report: a small JPEG of every frame sent, kept instead of the frame (a resumed run
        # decodes from the start again, so the batches it restores get their pictures too).
        self.thumbnails = Thumbnails() if options.report_path else None
        self._fingerprint: str | None = None
        self._next_id = 1
        self._described: list[BatchCaption] = []
        self._undelivered: list[BatchCaption] = []  # restored from a checkpoint, not yet taken
        self._frames_to_skip = 0
        self._frames_sampled = 0
        self._input_done = False  # finish_batches ran: the last batch is submitted and all are described

    def _check_events(self, options: CaptionOptions) -> dict[str, Any]:
        """The events schema, checked, and refused when ``max_new_tokens`` cannot hold a complete
        object (a model that decodes with the grammar says how many tokens the shortest takes).

        Raises:
            InvalidOptionError: a bad schema file, or a budget below the shortest object.
        """
        schema = load_schema(options.events_schema)
        least = getattr(self.model, "min_events_tokens", None)
        if least is not None:
            needed = least(schema)
            if options.max_new_tokens < needed:
                raise InvalidOptionError(
                    f"max_new_tokens {options.max_new_tokens} cannot hold a complete events object: the "
                    f"shortest one the schema allows takes {needed} tokens of {self.model.name}; give "
                    f"max_new_tokens {needed} or more"
                )
        return schema

    # -- feeding frames ---------------------------------------------------------------------

    def wants(self, timestamp: float, thumbnail: Thumbnail | None = None) -> bool:
        """Whether the frame at ``timestamp`` goes to the model (ask before converting it).

        Ask for every frame, in order: with adaptive sampling, frames that are not sampled
        still show cuts, and sampled near-duplicates are counted in their batch.

        Args:
            thumbnail: computes the frame's thumbnail
                (:func:`videocaption.graph.frames.frame_thumbnail`); adaptive sampling needs it.
        """
        decision = self.decide(timestamp, thumbnail)
        self.follow(decision, timestamp)
        return decision.keep

    def decide(self, timestamp: float, thumbnail: Thumbnail | None = None) -> Decision:
        """The sampler's decision on the frame at ``timestamp``, not yet acted on.

        :meth:`wants` is :meth:`decide` then :meth:`follow`. A live run decides on its reader's
        thread (so that only kept frames are converted and queued) and follows on the thread
        that adds frames; frames dropped in between never reach :meth:`follow`.
        """
        return self._sampler.decide(timestamp, thumbnail)

    def follow(self, decision: Decision, timestamp: float) -> None:
        """Act on a :meth:`decide` decision, in frame order: a skipped near-duplicate extends the
        batch in progress; a kept frame's shot (and cut) apply to the next :meth:`add`."""
        if decision.skipped:
            self._batcher.skip(timestamp)
        if decision.keep and self._adaptive:
            self._shot, self._new_shot = decision.shot, decision.new_shot

    def add(self, image: Image.Image, timestamp: float) -> None:
        """Add a sampled frame; blocks while the model is ``max_threads`` batches behind."""
        if self.thumbnails is not None:  # from the frame as decoded, before the model's resizing
            self.thumbnails.add(timestamp, image)
        image = self.model.prepare_image(image.convert("RGB"), self.options.batch_size)
        if self._fingerprint is None and self._checkpoint is not None:
            self._fingerprint = fingerprint(self.options, image)
            if self.options.resume:
                self._restore(self._checkpoint.load(self._fingerprint))
        self._frames_sampled += 1
        if self._new_shot:  # a cut: the batch in progress ends before this frame
            self._new_shot = False
            ended = self._batcher.flush()
            if ended is not None:
                self._submit(ended)
        if self._frames_to_skip:  # already described before the interruption
            self._frames_to_skip -= 1
            return
        full = self._batcher.add(SampledFrame(image=image, timestamp=timestamp), shot=self._shot)
        if full is not None:
            self._submit_heard(full)
        self._report("describing")

    # -- feeding audio (with transcribe) ----------------------------------------------------

    def _speech_gate_for(self, options: CaptionOptions) -> SpeechGate:
        transcriber = Transcriber(load_recognizer(options), options.language)
        held = math.ceil(MAX_AUDIO_LAG_S * options.fps / options.batch_size) + options.batches_in_flight
        return SpeechGate(transcriber, 1.0 / options.fps, held)

    def add_audio(self, samples: np.ndarray, start_time: float) -> None:
        """Add 16 kHz mono samples starting at ``start_time`` s; speech is transcribed as it ends.

        A failing detector or recogniser ends the transcript there (one warning); the visual
        captions go on.
        """
        if self._speech_gate is not None:
            self._transcribing(lambda: self._speech_gate.transcriber.add(samples, start_time))

    def end_audio(self, note: str | None = None) -> None:
        """No more audio (its end of stream, or ``note`` says why there is none)."""
        if self._speech_gate is None or self._speech_gate.transcriber.ended:
            return
        if note:  # a warning: with --transcribe asked for, hearing nothing must not be silent
            log.warning(note)
        self._transcribing(self._speech_gate.transcriber.end)

    def _transcribing(self, step: Callable[[], None]) -> None:
        transcriber = self._speech_gate.transcriber
        try:
            step()
        except BackendError as error:  # the recogniser's server: its message names the endpoint
            log.warning(
                "transcription stopped at %.1f s (%s); the captions go on without further speech",
                max(transcriber.covered_until(), 0.0),
                error,
            )
            transcriber.ended = True
        except CaptionError:
            raise
        except Exception as error:  # noqa: BLE001 - damaged audio, a recogniser that failed
            log.warning(
                "transcription stopped at %.1f s (%s: %s); the captions go on without further speech",
                max(transcriber.covered_until(), 0.0),
                type(error).__name__,
                error,
            )
            transcriber.ended = True
        for batch, speech in self._speech_gate.release():
            self._submit_heard(batch, speech)

    def _submit_heard(self, batch: FrameBatch, speech: str | None = None) -> None:
        """Submit a batch once its speech is known (at once without transcribe)."""
        if self._speech_gate is None:
            return self._submit(batch)
        if speech is None:
            self._speech_gate.hold(batch)
            ready = self._speech_gate.release()
        else:
            ready = [(batch, speech)]
        for held, text in ready:
            self._speech[held.batch_id] = text
            self._submit(held)

    def _prompt(self, timestamps: list[float], batch_id: int) -> str:
        speech = self._speech.get(batch_id)
        if speech:  # cut to the tokens kept for it
            words = speech.split()
            while len(words) > 1 and self.model.count_tokens(speech_line(" ".join(words))) > SPEECH_PROMPT_TOKENS:
                words = words[: len(words) * 3 // 4]
            speech = " ".join(words)
        return batch_prompt(self.options.prompt, timestamps, time_aware=self.options.time_aware, speech=speech)

    def _submit(self, batch: FrameBatch) -> None:
        try:
            self._scheduler.submit(batch)
        except BaseException:
            self._collect_finished()  # what finished before the failure goes into the checkpoint
            raise

    def _restore(self, batches: list[BatchCaption]) -> None:
        if not batches:
            return
        log.info("resuming after %d batches described before", len(batches))
        self._frames_to_skip = sum(batch.frames for batch in batches)
        self._described = list(batches)
        self._undelivered = list(batches)
        self._next_id = len(batches) + 1
        self._batcher = FrameBatcher(self.options.batch_size, first_batch_id=self._next_id, hold_full=self._adaptive)

    def take_described(self) -> list[BatchCaption]:
        """Batches described since the last call, in video order (never blocks).

        Batches restored from a checkpoint come first, once; new ones are checkpointed.
        """
        restored, self._undelivered = self._undelivered, []
        return restored + self._collect_finished()

    def _collect_finished(self) -> list[BatchCaption]:
        """Move what the model finished, in video order, into the run and its checkpoint."""
        ready = self._scheduler.take_finished(self._next_id)
        self._next_id += len(ready)
        self._described.extend(ready)
        if ready:
            if self._checkpoint is not None and self._fingerprint is not None and self._resumable():
                self._checkpoint.save(self._fingerprint, self._resumable())
            self._report("describing")
        return ready

    def _resumable(self) -> list[BatchCaption]:
        """The described batches a resumed run can keep: those before the first failed one."""
        return list(itertools.takewhile(lambda batch: batch.error is None, self._described))

    # -- finishing --------------------------------------------------------------------------

    def finish_batches(self) -> list[BatchCaption]:
        """Describe the last, possibly short, batch and wait for all; return the rest in order."""
        if not self._input_done:
            self._input_done = True
            if self._speech_gate is not None:
                self.end_audio()
                for batch, speech in self._speech_gate.release(everything=True):
                    self._submit_heard(batch, speech)
            last = self._batcher.flush()
            if last is not None:
                self._submit_heard(last, self._speech_gate.speech(last) if self._speech_gate else None)
            try:
                self._scheduler.join()
            except BaseException:
                self._collect_finished()  # what finished before the failure goes into the checkpoint
                raise
        return self.take_described()

    def finish(
        self,
        write: Callable[[CaptionResult], object] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        allow_empty: bool = False,
    ) -> CaptionResult:
        """Wait for every batch (see :meth:`finish_batches`), then run the summary and title passes.

        The one way a run ends with a result. The checkpoint is removed only once ``write``
        (which saves the result, e.g. :func:`videocaption.outputs.writers.write_outputs`) has
        succeeded: a failed write keeps it for ``resume``.

        Args:
            extra: added to the result (a live run's ``live`` section).
            allow_empty: a run without any batch still ends with a result (a live run stopped
                before its first batch), with no summary and no title.

        Raises:
            VideoInputError: no frame was received (the input has no video stream).
            OutputError: from ``write``.
        """
        self.finish_batches()
        if not self._described and not allow_empty:
            raise VideoInputError(
                "no video frame could be decoded (the input has no video stream, or its frames are damaged)"
            )
        self._report("summarizing")
        summary, rounds, title = "", 0, ""
        extra = dict(extra or {})
        try:
            summary, rounds, grounding = self.summarize_grounded(self._described)
            extra.update(grounding)
            self._report("titling")
            title = (
                clean_title(self._complete([title_prompt(self.options.title_prompt, summary)])[0])
                if self._described
                else ""
            )
        except BackendError as error:
            if not self._record_backend_errors:
                raise
            log.warning(
                "the %s could not be made (%s); the result is written without it",
                "title" if summary else "summary and title",
                error,
            )
        result = self.snapshot(title, summary, rounds, extra=extra)
        if write is not None:
            write(result)
        if self._checkpoint is not None:
            self._checkpoint.remove()
        self._report("done")
        return result

    def summarize(self, batches: list[BatchCaption]) -> tuple[str, int]:
        """The summary of described ``batches`` (their speech included) and the rounds it took;
        also a live run's window summaries."""
        return self._summarize(_summary_items(batches))

    def summarize_grounded(self, batches: list[BatchCaption]) -> tuple[str, int, dict[str, Any]]:
        """The final summary, asked to cite the descriptions it rests on, and checked.

        Returns the summary without its ``[n]`` markers, the rounds, and the result fields
        ``summary_evidence`` (each sentence's batches and span) and
        ``summary_citations_dropped`` (cited numbers that name no description); no fields when
        there was nothing to summarise.
        """
        cited = self._grounded.cited(_summary_items(batches))
        if not cited.answer.strip():
            return cited.answer, cited.rounds, {}
        spans = [(b.batch_id, b.start_time, b.end_time) for b in batches if b.error is None]
        summary, evidence, dropped = ground(cited, spans)
        return summary, cited.rounds, {"summary_evidence": evidence, "summary_citations_dropped": dropped}

    def snapshot(
        self, title: str = "", summary: str = "", rounds: int = 0, *, extra: dict[str, Any] | None = None
    ) -> CaptionResult:
        """The result of what is described so far (a live run rewrites its subtitles from it)."""
        return CaptionResult(
            video_title=title,
            summary=summary,
            batch_size=self.options.batch_size,
            batches=list(self._described),
            model=self.model.name,
            fps=float(self.options.fps),
            turnaround_time=time.perf_counter() - self._started,
            summary_rounds=rounds,
            video_end=self.options.video_end,
            extra=dict(extra or {}),
            transcript=(
                None
                if self._speech_gate is None
                else [segment.to_dict() for segment in self._speech_gate.transcriber.segments]
            ),
        )

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until a batch completed now would be described at once.

        A live run takes frames for the next batch only then, so that the frames left waiting
        (where the newest win) are the ones described next.
        """
        return self._scheduler.wait_for_room(timeout)

    def stop(self) -> int:
        """Stop early: finish the model call in progress, drop what waits, keep what is done.

        What was described stays in the checkpoint (for ``resume``); no result is made.

        Returns:
            How many batches the checkpoint holds.
        """
        self._scheduler.stop()
        self._collect_finished()
        return len(self._resumable())

    def abort(self) -> None:
        """Give the run up: drop waiting batches, wait for the model call in progress, keep nothing."""
        self._scheduler.stop()

    # -- the model passes -------------------------------------------------------------------

    def _describe_group(self, batches: list[FrameBatch]) -> list[BatchCaption]:
        """Describe batches in one model call; on failure isolate, then split, then record."""
        requests = [([f.image for f in b.frames], self._prompt(b.timestamps, b.batch_id)) for b in batches]
        started = time.perf_counter()
        try:
            with self._model_calls:
                texts = self.model.describe_batch(requests, max_new_tokens=self.options.max_new_tokens)
        except BackendError as error:
            if not self._record_backend_errors:
                raise
            return [self._server_failed(batch, error, time.perf_counter() - started) for batch in batches]
        except CaptionError:
            raise
        except Exception as error:  # noqa: BLE001 - out of memory, a backend that timed out, ...
            if len(batches) > 1:
                log.warning(
                    "describing %d batches together failed (%s); describing them one by one", len(batches), error
                )
                return [caption for batch in batches for caption in self._describe_group([batch])]
            return [self._describe_split(batches[0], error)]
        seconds = (time.perf_counter() - started) / len(batches)
        captions = [
            self._caption(batch, text, seconds, usage=usage)
            for batch, text, usage in zip(batches, texts, usage_of(texts))
        ]
        return self._with_events(batches, captions) if self._events_schema is not None else captions

    def _with_events(self, batches: list[FrameBatch], captions: list[BatchCaption]) -> list[BatchCaption]:
        """The captions with their events: a second, constrained call for the described batches.

        Every answer is validated (a server may ignore ``response_format``); the invalid ones are
        asked once more, then recorded as ``events_error``. A failing events call never fails the
        batch: its description is kept.
        """
        todo = [i for i, caption in enumerate(captions) if caption.error is None]
        schemas = {i: batch_schema(self._events_schema, batches[i].start_time, batches[i].end_time) for i in todo}
        found: dict[int, dict[str, Any]] = {}
        why: dict[int, str] = {}
        for _attempt in range(2):
            asking = [i for i in todo if i not in found]
            if not asking:
                break
            requests = [
                (
                    [f.image for f in batches[i].frames],
                    events_prompt(batches[i].timestamps, schemas[i], time_aware=self.options.time_aware),
                )
                for i in asking
            ]
            try:
                with self._model_calls:
                    texts = self.model.describe_batch(
                        requests, max_new_tokens=self.options.max_new_tokens, json_schemas=[schemas[i] for i in asking]
                    )
            except InvalidOptionError:
                raise
            except Exception as error:  # noqa: BLE001 - a server down, out of memory: the batch keeps its text
                why.update({i: f"{type(error).__name__}: {' '.join(str(error).split())}" for i in asking})
                continue
            for i, text in zip(asking, texts):
                events, problem = parse_events(text, schemas[i])
                if events is None:
                    why[i] = problem
                else:
                    found[i] = events
        for i in todo:
            if i not in found:
                log.warning("batch %d has no events: %s", captions[i].batch_id, why[i])
        return [
            dataclasses.replace(caption, events=found[i])
            if i in found
            else dataclasses.replace(caption, events_error=why[i])
            if i in why
            else caption
            for i, caption in enumerate(captions)
        ]

    def _describe_split(self, batch: FrameBatch, first_error: Exception) -> BatchCaption:
        """Retry a failed batch once as two half batches; record an error if that fails too."""
        log.warning("batch %d failed (%s); retrying it split in two", batch.batch_id, first_error)
        half = max(1, len(batch.frames) // 2)
        parts = [batch.frames[:half], batch.frames[half:]] if len(batch.frames) > 1 else [batch.frames]
        requests = [
            ([f.image for f in part], self._prompt([f.timestamp for f in part], batch.batch_id)) for part in parts
        ]
        started = time.perf_counter()
        try:
            with self._model_calls:
                texts = self.model.describe_batch(requests, max_new_tokens=self.options.max_new_tokens)
        except BackendError as error:
            if not self._record_backend_errors:
                raise
            return self._server_failed(batch, error, time.perf_counter() - started)
        except CaptionError:
            raise
        except Exception as error:  # noqa: BLE001 - the halves failed too: the batch is recorded as failed
            log.error("batch %d could not be described: %s", batch.batch_id, error)
            return self._caption(batch, "", time.perf_counter() - started, error=f"{type(error).__name__}: {error}")
        parts = usage_of(texts)
        usage = None if None in parts else sum(parts[1:], parts[0])
        caption = self._caption(batch, " ".join(texts), time.perf_counter() - started, usage=usage)
        return self._with_events([batch], [caption])[0] if self._events_schema is not None else caption

    def _server_failed(self, batch: FrameBatch, error: BackendError, seconds: float) -> BatchCaption:
        """A batch the server failed after its retries (``record_backend_errors``): recorded
        with its error, not split (a server that is down fails the halves too)."""
        log.error("batch %d could not be described: %s", batch.batch_id, error)
        return self._caption(batch, "", seconds, error=f"BackendError: {error}")

    def _caption(
        self, batch: FrameBatch, text: str, seconds: float, error: str | None = None, usage: Usage | None = None
    ) -> BatchCaption:
        return BatchCaption(
            batch_id=batch.batch_id,
            frames=len(batch.frames),
            start_time=batch.start_time,
            end_time=batch.end_time,
            description=text,
            inference_time=seconds,
            error=error,
            prompt_tokens=usage.prompt_tokens if usage else None,
            image_tokens=usage.image_tokens if usage else None,
            generated_tokens=usage.generated_tokens if usage else None,
            shot=batch.shot,
            frames_skipped=batch.frames_skipped,
            speech=self._speech.pop(batch.batch_id, None) if self._speech_gate is not None else None,
        )

    def _complete(self, prompts: list[str]) -> list[str]:
        """Text-only passes, batched up to ``max_threads`` prompts a call."""
        size = self.options.batches_in_flight
        texts: list[str] = []
        for start in range(0, len(prompts), size):
            with self._model_calls:
                texts.extend(
                    self.model.complete_batch(prompts[start : start + size], max_new_tokens=self.options.max_new_tokens)
                )
        return texts

    def _report(self, stage: str) -> None:
        if self.on_progress is not None:
            self.on_progress(
                Progress(frames_sampled=self._frames_sampled, batches_done=len(self._described), stage=stage)
            )


def _speech_and_events(batch: BatchCaption) -> str:
    """What the summary pass reads beside a batch's description: its speech, its events' fields."""
    extra = f"\n{speech_line(batch.speech)}" if batch.speech else ""
    line = events_line(batch.events) if batch.events else ""
    return extra + (f"\n{line}" if line else "")
