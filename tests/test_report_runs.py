"""The report made by real runs: the CLI on the sample clip and a resumed run (a live run's: in
tests/test_live_core.py).

tests/test_report.py checks the page itself on a hand-made result; these check the wiring: the
pictures are the frames the pipeline held (no second decode), the report is written with the
other outputs, and a resumed run's restored batches get their pictures.
"""

from __future__ import annotations

import json
import re

import pytest
from browser import CHROMIUM, dump_dom, elements, with_probe
from helpers import FAST, SAMPLE_CLIP, run_cli

from videocaption import caption_video
from videocaption.captioning.checkpoint import Checkpoint

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh --test)")
NATURAL_WIDTHS = """window.addEventListener("load", () => {
  document.querySelectorAll("img").forEach((img) => { img.dataset.naturalWidth = img.naturalWidth; });
});"""


def cards(html_elements) -> list:
    return [element for element in html_elements if element.tag == "section" and "card" in element.classes]


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("images", ["embed", "folder"])
def test_the_cli_writes_a_report_of_every_batch_with_its_frames(tmp_path, images):
    done = run_cli(str(SAMPLE_CLIP), "--output", "out/r.json", "--report", "--report-images", images, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "r.json").read_text())
    page = tmp_path / "out" / "r.html"  # --report alone: beside the result file
    assert page.is_file()
    assert (tmp_path / "out" / "r_files").is_dir() == (images == "folder")
    dom = elements(dump_dom(with_probe(page, body_script=NATURAL_WIDTHS)))
    assert [int(card.attrs["data-batch-id"]) for card in cards(dom)] == [b["batch_id"] for b in result["batches"]]
    pictures = [element for element in dom if element.tag == "img"]
    assert len(pictures) == result["frames_analysed"]  # one thumbnail per frame the model saw
    assert all(int(img.attrs["data-natural-width"]) > 0 for img in pictures)


@pytest.mark.slow
def test_a_resumed_run_shows_the_pictures_of_the_batches_it_restored(tmp_path, monkeypatch):
    """The checkpoint keeps descriptions, not pictures: the resumed run makes them again from the
    frames it decodes (from the start: the first frame is part of the checkpoint's fingerprint)."""
    options = dict(FAST, batch_size=2, result_path=str(tmp_path / "r.json"), report_path=str(tmp_path / "r.html"))
    fingerprints = []
    save = Checkpoint.save
    monkeypatch.setattr(
        Checkpoint,
        "save",
        lambda self, fingerprint, batches: (fingerprints.append(fingerprint), save(self, fingerprint, batches)),
    )
    whole = caption_video(SAMPLE_CLIP, **options)
    assert len(whole.batches) == 3
    # What a run interrupted after two batches leaves: a checkpoint, no result, no report.
    (tmp_path / "r.json").unlink()
    (tmp_path / "r.html").unlink()
    save(Checkpoint(options["result_path"]), fingerprints[0], list(whole.batches[:2]))
    resumed = caption_video(SAMPLE_CLIP, **options, resume=True)
    assert [b.description for b in resumed.batches] == [b.description for b in whole.batches]
    # Restored, not described again: a restored batch keeps the time its first run measured.
    assert [b.inference_time for b in resumed.batches[:2]] == [b.inference_time for b in whole.batches[:2]]
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(re.findall(r"<img ", html)) == resumed.frames_analysed == whole.frames_analysed
