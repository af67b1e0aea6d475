"""Model failures: a failed batch is retried split in two, then recorded with an ``error``; the run goes on.

In process, the tiny model's ``describe_batch`` is wrapped to raise (out of memory, a runtime
error) for chosen images; through the CLI the same wrapper is installed before ``main`` runs, so
the exit code (3: incomplete) and the result file can be checked as a user sees them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import FAST, REPO_ROOT, make_clip
from PIL import Image

from videocaption.backends import load_model
from videocaption.captioning.captioner import Captioner
from videocaption.errors import ContextOverflowError
from videocaption.options import CaptionOptions

POISON = (255, 0, 0)  # frames of this colour make the model fail


def frame(colour=(90, 120, 60)) -> Image.Image:
    return Image.new("RGB", (64, 48), colour)


def poisoned(images) -> bool:
    return any(image.getpixel((0, 0)) == POISON for image in images)


@pytest.fixture(scope="module")
def model():
    return load_model(CaptionOptions(**FAST))


@pytest.fixture
def calls(model, monkeypatch):
    """Install a failing ``describe_batch``; returns the list of calls (frames per request)."""
    log: list[list[int]] = []
    real = model.describe_batch

    def install(fails):
        def describe_batch(requests, **kwargs):
            log.append([len(images) for images, _ in requests])
            error = fails(requests)
            if error is not None:
                raise error
            return real(requests, **kwargs)

        monkeypatch.setattr(model, "describe_batch", describe_batch)
        return log

    return install


def caption(model, colours, **options) -> Captioner:
    """Feed one frame a second (``colours``), then finish; returns the captioner."""
    captioner = Captioner(CaptionOptions(**{**FAST, "batch_size": 4, **options}), model)
    for second, colour in enumerate(colours):
        captioner.add(frame(colour), float(second))
    return captioner


def test_a_batch_that_fails_whole_is_retried_as_two_halves(model, calls):
    """Out of memory on four frames, fine on two: the split retry describes the whole batch."""
    log = calls(
        lambda requests: torch.OutOfMemoryError("CUDA out of memory")
        if any(len(images) > 2 for images, _ in requests)
        else None
    )
    result = caption(model, [(90, 120, 60)] * 4).finish()
    assert log[:2] == [[4], [2, 2]]
    (batch,) = result.batches
    assert batch.error is None and batch.description
    assert (batch.start_time, batch.end_time, batch.frames) == (0.0, 3.0, 4)


def test_a_batch_that_still_fails_is_recorded_and_the_run_goes_on(model, calls):
    log = calls(
        lambda requests: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(poisoned(images) for images, _ in requests)
        else None
    )
    colours = [(90, 120, 60)] * 8
    colours[1] = POISON  # in the first batch (frames 0-3)
    result = caption(model, colours).finish()
    assert log[:2] == [[4], [2, 2]], "the failed batch is tried once more, split in two"
    first, second = result.batches
    assert first.error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert first.description == "" and (first.start_time, first.end_time, first.frames) == (0.0, 3.0, 4)
    assert second.error is None and second.description
    assert result.summary, "the summary is made from the batches that were described"
    assert result.frames_analysed == 8
    written = result.to_dict()  # what result.json holds
    assert written["batches"][0]["error"].startswith("OutOfMemoryError")
    assert "error" not in written["batches"][1]


def test_one_failing_batch_in_a_group_does_not_fail_the_others(model, calls):
    """With --multithreading several batches share a call: a failure is narrowed to its batch."""
    calls(
        lambda requests: RuntimeError("device-side assert triggered")
        if any(poisoned(images) for images, _ in requests)
        else None
    )
    colours = [(90, 120, 60)] * 12
    colours[5] = POISON  # batch 2 of 3
    result = caption(model, colours, multithreading=True, max_threads=3).finish()
    assert [b.error for b in result.batches] == [None, "RuntimeError: device-side assert triggered", None]
    assert all(b.description for b in result.batches if b.error is None)


def test_every_batch_failing_still_ends_the_run(model, calls):
    calls(lambda requests: RuntimeError("the accelerator is gone"))
    result = caption(model, [(90, 120, 60)] * 5).finish()
    assert [b.error for b in result.batches] == ["RuntimeError: the accelerator is gone"] * 2
    assert result.summary == ""


def test_configuration_errors_are_not_retried_or_hidden(model, calls):
    """A CaptionError (a prompt too long for the context) is the user's to fix: it propagates."""
    log = calls(lambda requests: ContextOverflowError("the prompt needs 5000 tokens"))
    with pytest.raises(ContextOverflowError):
        caption(model, [(90, 120, 60)] * 4).finish()
    assert log == [[4]]


# -- through the CLI ---------------------------------------------------------------------------

CLI_WITH_FAILING_MODEL = textwrap.dedent("""
    import sys
    import torch
    from videocaption.deepseek_vl2 import DeepseekVL2
    from videocaption.cli.main import main

    real = DeepseekVL2.describe_batch

    def describe_batch(self, requests, **kwargs):
        # The first batch (its prompt names the frame at 0:00.0) runs out of memory, whole or split.
        if any("0:00.0" in prompt for _, prompt in requests):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, requests, **kwargs)

    DeepseekVL2.describe_batch = describe_batch
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_cli_exit_code_says_the_run_was_incomplete(tmp_path):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, duration=6, size="160x120")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI_WITH_FAILING_MODEL,
            str(clip),
            "--model",
            FAST["model"],
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "--batch-size",
            "3",
            "--output",
            str(tmp_path / "result.json"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "incomplete: batches 1 could not be described" in done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    first, second = result["batches"]
    assert first["error"] == "OutOfMemoryError: CUDA out of memory (injected)"
    assert (first["start_time"], first["end_time"]) == (0.0, 2.0)
    assert "error" not in second and second["description"]
    assert (second["start_time"], second["end_time"]) == (3.0, 5.0)
    assert result["summary"] and result["frames_analysed"] == 6
