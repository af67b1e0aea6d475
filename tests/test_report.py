"""The HTML report (videocaption/outputs/report.py), rendered and looked at in a real browser.

A result is built by hand (batches over two shots, near-duplicates skipped, a failed batch,
speech, hostile text from the model and in the file name) with thumbnails of real frames of the
sample clip; the page is loaded from its file by headless chromium, and the DOM it renders
(after the page's and a probe's scripts ran) and a screenshot are checked.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser import CHROMIUM, dump_dom, elements, screenshot, with_probe
from helpers import SAMPLE_CLIP
from PIL import Image

from videocaption.errors import OutputError
from videocaption.library.manifest import FAILED, OK, SKIPPED, ManifestRow
from videocaption.outputs import report as report_module
from videocaption.outputs.report import (
    POSTER_NAME,
    Thumbnails,
    asset_folder,
    render_library_index,
    render_report,
    write_library_index,
    write_report,
)
from videocaption.result import BatchCaption, CaptionResult

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh --test)")

DURATION = 5.28  # the sample clip's
FRAME_TIMES = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # sampled at 1 fps
HOSTILE_NAME = "<img src=x onerror=alert(1)>.mp4"
HOSTILE_DESCRIPTION = "A rabbit <script>alert(1)</script> wakes up & <b>stretches</b>."
# What a bar of each batch spans: until the next batch's first frame; the last one until the video ends.
BATCH_SPANS = [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0), (5.0, DURATION)]
SPEECH = [{"start": 0.3, "end": 1.6, "text": "hello there"}, {"start": 4.2, "end": 5.0, "text": "<i>bye</i>"}]
# Test-only scripts added to a copy of the page: alert() leaves a mark instead of a dialog; at
# load, every picture's decoded width and every bar's rendered width go into data attributes,
# then a click on the last batch's bar, and where that scrolled.
ALERT_TRAP = "window.alert = () => { document.documentElement.dataset.alerted = 'yes'; };"
PROBE = """
window.addEventListener("load", () => {
  document.querySelectorAll("img").forEach((img) => { img.dataset.naturalWidth = img.naturalWidth; });
  document.querySelectorAll(".track .seg").forEach((seg) => {
    seg.dataset.renderedWidth = seg.getBoundingClientRect().width;
    seg.dataset.trackWidth = seg.parentElement.getBoundingClientRect().width;
  });
  document.querySelector("#track-batches a[href='#batch-4']").click();
  setTimeout(() => {
    document.body.dataset.hash = location.hash;
    document.body.dataset.scrollY = Math.round(window.scrollY);
    document.body.dataset.cardTop = Math.round(document.getElementById("batch-4").getBoundingClientRect().top);
  }, 200);
});
"""
WINDOW_HEIGHT = 600


def sample_frames(folder: Path) -> list[Image.Image]:
    """The sample clip's frames at FRAME_TIMES (every 25th of 25 fps), decoded by ffmpeg."""
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(SAMPLE_CLIP),
            "-vf",
            r"select=not(mod(n\,25))",
            "-fps_mode",
            "vfr",
            str(folder / "frame-%d.png"),
        ],
        check=True,
    )
    frames = [Image.open(folder / f"frame-{index + 1}.png") for index in range(len(FRAME_TIMES))]
    assert all(frame.size == (1280, 720) for frame in frames)
    return frames


def caption_result(batches: int = 4) -> CaptionResult:
    made = [
        BatchCaption(
            1,
            2,
            0.0,
            1.0,
            "A green meadow at dawn.",
            1.5,
            prompt_tokens=900,
            image_tokens=842,
            generated_tokens=12,
            speech="hello there",
            shot=0,
        ),
        BatchCaption(
            2,
            2,
            2.0,
            3.0,
            HOSTILE_DESCRIPTION,
            1.25,
            prompt_tokens=901,
            image_tokens=842,
            generated_tokens=16,
            speech="",
            shot=0,
            frames_skipped=1,
        ),
        BatchCaption(3, 1, 4.0, 4.0, "", 0.0, error="RuntimeError: CUDA out of memory", speech="<i>bye</i>", shot=1),
        BatchCaption(
            4,
            1,
            5.0,
            5.0,
            "The rabbit looks at a butterfly.",
            0.75,
            prompt_tokens=480,
            image_tokens=421,
            generated_tokens=9,
            speech="",
            shot=1,
        ),
    ][:batches]
    return CaptionResult(
        video_title="Big Buck Bunny <wakes>",
        summary="A rabbit wakes up in a meadow.",
        batch_size=2,
        batches=made,
        model="tiny",
        fps=1.0,
        turnaround_time=7.5,
        video_end=DURATION,
        transcript=SPEECH,
    )


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Image.Image]:
    return sample_frames(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def thumbnails(frames) -> Thumbnails:
    collected = Thumbnails()
    for seconds, frame in zip(FRAME_TIMES, frames):
        collected.add(seconds, frame)
    return collected


@pytest.fixture(scope="module")
def page(tmp_path_factory, thumbnails) -> Path:
    folder = tmp_path_factory.mktemp("report")
    return write_report(
        caption_result(), thumbnails, folder / "result.html", video_name=HOSTILE_NAME, video_duration=DURATION
    )


@pytest.fixture(scope="module")
def dom(page) -> list:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --test)")
    return elements(dump_dom(with_probe(page, ALERT_TRAP, PROBE), window=f"1200,{WINDOW_HEIGHT}"))


def of_class(dom, name: str) -> list:
    return [element for element in dom if name in element.classes]


def style_percent(element, prop: str) -> float:
    declarations = dict(
        (name.strip(), value)
        for name, value in (part.split(":") for part in element.attrs["style"].split(";") if part.strip())
    )
    return float(declarations[prop].strip().removesuffix("%"))


# -- thumbnails -----------------------------------------------------------------------------------


def test_thumbnails_keep_a_small_jpeg_of_each_frame(thumbnails):
    assert len(thumbnails) == len(FRAME_TIMES)
    assert [t.timestamp for t in thumbnails] == FRAME_TIMES
    for thumbnail in thumbnails:
        assert thumbnail.jpeg[:2] == b"\xff\xd8"  # a JPEG
        with Image.open(io.BytesIO(thumbnail.jpeg)) as image:
            assert image.size == (160, 90) == (thumbnail.width, thumbnail.height)
        assert len(thumbnail.jpeg) < 15_000
    assert [t.timestamp for t in thumbnails.between(2.0, 3.0)] == [2.0, 3.0]
    assert thumbnails.poster().timestamp == 3.0  # the middle frame


def test_thumbnails_of_a_ten_minute_video_stay_small(frames):
    """Item 3 of issue 25: 600 frames of 720p (10 min at 1 fps) are ~1.6 GB as frames; their
    thumbnails must stay under 15 MB (what the report adds to a run's memory)."""
    frame = frames[3].convert("RGB")
    collected = Thumbnails()
    for index in range(600):
        # A different picture each time (no two JPEGs alike): the frame shifted by a few pixels.
        collected.add(float(index), frame.transform(frame.size, Image.Transform.AFFINE, (1, 0, index % 97, 0, 1, 0)))
    frames_bytes = 600 * 1280 * 720 * 3
    assert len(collected) == 600
    assert collected.nbytes < 15_000_000
    assert collected.nbytes * 100 < frames_bytes  # under 1% of keeping the frames


def test_a_frame_added_twice_is_kept_once(thumbnails):
    collected = Thumbnails()
    frame = Image.new("RGB", (640, 360), "red")
    collected.add(1.0, frame)
    collected.add(1.0, frame)
    assert len(collected) == 1


def test_unknown_image_mode_is_refused(thumbnails):
    with pytest.raises(ValueError, match="embed, folder"):
        render_report(caption_result(), thumbnails, video_name="v.mp4", images="inline")
    with pytest.raises(ValueError, match="asset_dir"):
        render_report(caption_result(), thumbnails, video_name="v.mp4", images="folder")


# -- the report in a browser ----------------------------------------------------------------------


def test_one_card_per_batch_in_time_order_with_its_frames(dom):
    cards = [element for element in dom if element.tag == "section" and "card" in element.classes]
    assert [card.attrs["id"] for card in cards] == ["batch-1", "batch-2", "batch-3", "batch-4"]
    starts = [float(card.attrs["data-start"]) for card in cards]
    assert starts == sorted(starts) == [0.0, 2.0, 4.0, 5.0]
    frame_times = [float(img.attrs["data-time"]) for img in dom if img.tag == "img"]
    assert frame_times == FRAME_TIMES
    assert [e.text for e in dom if e.tag == "figcaption"] == [
        "0:00.0",
        "0:01.0",
        "0:02.0",
        "0:03.0",
        "0:04.0",
        "0:05.0",
    ]
    text = " ".join(card.text for card in cards)
    assert "hello there" in text and "A green meadow at dawn." in text
    assert "900 prompt tokens (842 image), 12 generated, 1.50 s" in text
    [failed] = [card for card in cards if "failed" in card.classes]
    assert failed.attrs["id"] == "batch-3" and "RuntimeError: CUDA out of memory" in failed.text


def test_timeline_bars_are_to_scale(dom):
    bars = of_class(dom, "batch")
    assert [(float(b.attrs["data-start"]), float(b.attrs["data-end"])) for b in bars] == BATCH_SPANS
    for bar, (start, end) in zip(bars, BATCH_SPANS):
        assert style_percent(bar, "left") == pytest.approx(100 * start / DURATION, abs=0.01)
        assert style_percent(bar, "width") == pytest.approx(100 * (end - start) / DURATION, abs=0.01)
    # ... and so they are drawn: every bar's width on screen, as a share of its row.
    for bar in of_class(dom, "seg"):
        share = float(bar.attrs["data-rendered-width"]) / float(bar.attrs["data-track-width"])
        expected = (float(bar.attrs["data-end"]) - float(bar.attrs["data-start"])) / DURATION
        assert share == pytest.approx(expected, abs=0.005)
    shots = of_class(dom, "shot")
    assert [(float(s.attrs["data-start"]), float(s.attrs["data-end"])) for s in shots] == [(0.0, 4.0), (4.0, DURATION)]
    assert [float(c.attrs["data-time"]) for c in of_class(dom, "cut")] == [4.0]
    [skipped] = of_class(dom, "skipped")
    assert skipped.attrs["href"] == "#batch-2" and "1 near-duplicate" in skipped.attrs["title"]
    speech = of_class(dom, "speech")
    assert [(float(s.attrs["data-start"]), float(s.attrs["data-end"])) for s in speech if s.tag == "a"] == [
        (0.3, 1.6),
        (4.2, 5.0),
    ]


def test_every_bar_links_to_a_card_and_a_click_scrolls_to_it(dom):
    cards = {element.attrs["id"] for element in dom if "card" in element.classes}
    links = [element.attrs["href"] for element in of_class(dom, "seg") + of_class(dom, "cut")]
    assert links and all(link.removeprefix("#") in cards for link in links)
    [body] = [element for element in dom if element.tag == "body"]
    assert body.attrs["data-hash"] == "#batch-4"
    assert int(body.attrs["data-scroll-y"]) > 0
    assert 0 <= int(body.attrs["data-card-top"]) < WINDOW_HEIGHT


def test_images_are_decoded(dom):
    images = [element for element in dom if element.tag == "img"]
    assert len(images) == len(FRAME_TIMES)
    assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in images)
    assert [int(img.attrs["data-natural-width"]) for img in images] == [160] * len(FRAME_TIMES)


def test_model_and_file_name_text_renders_as_text(dom, page):
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html  # the report itself has no script at all
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.mp4" in html
    scripts = [element.attrs.get("id") for element in dom if element.tag == "script"]
    assert scripts == ["probe-head", "probe-body"]  # only the test's own
    assert not [element for element in dom if "onerror" in element.attrs or element.tag in ("b", "i")]
    assert [element for element in dom if element.tag == "img" and element.attrs["src"] == "x"] == []
    [root] = [element for element in dom if element.tag == "html"]
    assert "data-alerted" not in root.attrs
    [description] = [e for e in dom if "description" in e.classes and "<script>" in e.text]
    assert description.text == HOSTILE_DESCRIPTION
    [name] = of_class(dom, "video-name")
    assert name.text == HOSTILE_NAME
    assert [e.text for e in dom if e.tag == "h1"] == ["Big Buck Bunny <wakes>"]


@needs_chromium
def test_screenshot_is_not_blank(page, tmp_path):
    png = screenshot(page, tmp_path / "report.png", window="1200,1200")
    with Image.open(png) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 1000  # thumbnails, bars, text: many distinct pixels
    most = max(count for count, _ in colors)
    assert most < 0.8 * sum(count for count, _ in colors)  # the page's background is not all there is


# -- images in a folder, atomically ---------------------------------------------------------------


def linked_files(report: Path) -> list[Path]:
    return [
        report.parent / unquote(img.attrs["src"])
        for img in elements(report.read_text(encoding="utf-8"))
        if img.tag == "img"
    ]


def test_folder_images_are_written_with_the_page_and_shown(tmp_path, thumbnails):
    report = write_report(
        caption_result(), thumbnails, tmp_path / "result.html", video_name="v.mp4", images="folder", poster=True
    )
    files = linked_files(report)
    assert len(files) == len(FRAME_TIMES) and all(f.parent == tmp_path / "result_files" and f.is_file() for f in files)
    assert {f.read_bytes() for f in files} == {t.jpeg for t in thumbnails}
    assert (asset_folder(report) / POSTER_NAME).read_bytes() == thumbnails.poster().jpeg
    assert "base64" not in report.read_text(encoding="utf-8")
    assert not list(tmp_path.rglob("*.tmp"))
    if CHROMIUM is not None:
        dom = elements(dump_dom(with_probe(report, body_script=PROBE)))
        assert [int(e.attrs["data-natural-width"]) for e in dom if e.tag == "img"] == [160] * len(FRAME_TIMES)


def test_a_live_rewrite_writes_only_new_thumbnails_and_says_it_is_in_progress(tmp_path, thumbnails):
    early = Thumbnails()
    for thumbnail in list(thumbnails)[:4]:
        early._thumbnails[round(thumbnail.timestamp * 1_000_000)] = thumbnail
    report = write_report(
        caption_result(batches=2), early, tmp_path / "result.html", video_name="live", images="folder", partial=True
    )
    assert "In progress: 2 batches" in report.read_text(encoding="utf-8")
    first = {path.name: path.stat().st_ino for path in asset_folder(report).iterdir()}
    assert len(first) == 4
    write_report(caption_result(), thumbnails, report, video_name="live", images="folder")
    now = {path.name: path.stat().st_ino for path in asset_folder(report).iterdir()}
    assert len(now) == 6 and all(now[name] == inode for name, inode in first.items())  # not rewritten
    assert "In progress" not in report.read_text(encoding="utf-8")


def test_a_rerun_on_other_frames_removes_the_old_thumbnails(tmp_path, thumbnails):
    report = write_report(caption_result(), thumbnails, tmp_path / "result.html", video_name="v", images="folder")
    other = Thumbnails()
    for seconds in FRAME_TIMES:
        other.add(seconds, Image.new("RGB", (320, 180), (int(seconds * 40), 80, 120)))
    write_report(caption_result(), other, report, video_name="v", images="folder")
    assert sorted(path.name for path in asset_folder(report).iterdir()) == sorted(t.file_name for t in other)


def test_a_failed_write_keeps_the_old_report_and_every_picture_it_shows(tmp_path, thumbnails, monkeypatch):
    report = write_report(
        caption_result(batches=2), thumbnails, tmp_path / "result.html", video_name="v", images="folder"
    )
    before = report.read_text(encoding="utf-8")
    pictures = {path: path.read_bytes() for path in linked_files(report)}
    other = Thumbnails()
    for seconds in FRAME_TIMES:
        other.add(seconds, Image.new("RGB", (320, 180), "blue"))
    replace = os.replace

    def failing_replace(source, target):
        if Path(target) == report:
            raise OSError(28, "No space left on device")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match=r"result.html: cannot be written \(No space left on device\)"):
        write_report(caption_result(), other, report, video_name="v", images="folder")
    assert report.read_text(encoding="utf-8") == before
    assert {path: path.read_bytes() for path in linked_files(report)} == pictures
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_keeps_the_old_report(small_disk, thumbnails):
    report = write_report(caption_result(batches=1), thumbnails, small_disk / "result.html", video_name="v")
    before = report.read_text(encoding="utf-8")
    stats = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(bytes(stats.f_bavail * stats.f_frsize - 8192))  # two pages left
    with pytest.raises(OutputError, match="No space left on device"):
        write_report(caption_result(), thumbnails, report, video_name="v")
    assert report.read_text(encoding="utf-8") == before
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "result.html"]


# -- the library index ----------------------------------------------------------------------------


@pytest.fixture
def library(tmp_path, thumbnails) -> Path:
    root = tmp_path / "out"
    for key in ("b/long.mp4", "a/short.mp4"):
        write_report(caption_result(), thumbnails, root / key / "result.html", video_name=key, poster=True)
    rows = [
        ManifestRow(path="/videos/b/long.mp4", key="b/long.mp4", status=OK, title="A long <one>", duration=605.5),
        ManifestRow(path="/videos/a/short.mp4", key="a/short.mp4", status=OK, title="A short one", duration=5.28),
        ManifestRow(
            path="/videos/c/broken.mp4",
            key="c/broken.mp4",
            status=FAILED,
            error="no video stream <script>alert(1)</script>",
            duration=None,
        ),
        ManifestRow(path="/videos/d/notes.txt", key="d/notes.txt", status=SKIPPED, error="not a video"),
    ]
    return write_library_index(rows, root)


def test_library_index_lists_every_video_with_its_report(library):
    dom = elements(library.read_text(encoding="utf-8"))
    rows = [element for element in dom if element.tag == "tr" and "data-key" in element.attrs]
    assert [row.attrs["data-key"] for row in rows] == ["a/short.mp4", "b/long.mp4", "c/broken.mp4", "d/notes.txt"]
    links = [element.attrs["href"] for element in dom if element.tag == "a"]
    assert links == ["a/short.mp4/result.html", "b/long.mp4/result.html"]
    assert all((library.parent / link).is_file() for link in links)
    posters = [element.attrs["src"] for element in dom if element.tag == "img"]
    assert posters == ["a/short.mp4/result_files/poster.jpg", "b/long.mp4/result_files/poster.jpg"]
    [failed] = [row for row in rows if "failed" in row.classes]
    assert "no video stream <script>alert(1)</script>" in failed.text
    assert "10:05.5" in next(row for row in rows if row.attrs["data-key"] == "b/long.mp4").text


@needs_chromium
def test_library_index_sorts_by_a_clicked_column(library):
    probe = """
    window.addEventListener("load", () => {
      document.querySelectorAll("img").forEach((img) => { img.dataset.naturalWidth = img.naturalWidth; });
      const order = () => [...document.querySelectorAll("#library tbody tr")].map((row) => row.dataset.key).join(",");
      const duration = [...document.querySelectorAll("#library th")].find((th) => th.textContent === "duration");
      duration.click();
      document.body.dataset.ascending = order();
      duration.click();
      document.body.dataset.descending = order();
    });
    """
    dom = elements(dump_dom(with_probe(library, ALERT_TRAP, probe)))
    [body] = [element for element in dom if element.tag == "body"]
    # Unknown durations sort first (as -1); equal ones keep their order (the sort is stable).
    assert body.attrs["data-ascending"] == "c/broken.mp4,d/notes.txt,a/short.mp4,b/long.mp4"
    assert body.attrs["data-descending"] == "b/long.mp4,a/short.mp4,c/broken.mp4,d/notes.txt"
    assert [int(e.attrs["data-natural-width"]) for e in dom if e.tag == "img"] == [160, 160]
    assert [e.attrs.get("id") for e in dom if e.tag == "script"] == ["probe-head", None, "probe-body"]
    [root] = [element for element in dom if element.tag == "html"]
    assert "data-alerted" not in root.attrs


def test_names_with_url_characters_still_link(tmp_path, thumbnails):
    """A "#" or "?" in a file name is part of the path, not a fragment or a query."""
    report = write_report(
        caption_result(),
        thumbnails,
        tmp_path / "out" / "my #1?.mp4" / "take #2.html",
        video_name="v",
        images="folder",
        poster=True,
    )
    files = linked_files(report)
    assert files and all(path.is_file() for path in files)
    assert all("%23" in img.attrs["src"] for img in elements(report.read_text(encoding="utf-8")) if img.tag == "img")
    index = write_library_index(
        [ManifestRow(path="/v/my #1?.mp4", key="my #1?.mp4", status=OK)], tmp_path / "out", report_name="take #2.html"
    )
    [link] = [e.attrs["href"] for e in elements(index.read_text(encoding="utf-8")) if e.tag == "a"]
    assert link == "my%20%231%3F.mp4/take%20%232.html" and (index.parent / unquote(link)).is_file()
    if CHROMIUM is not None:
        dom = elements(dump_dom(with_probe(report, body_script=PROBE.replace("#batch-4", "#batch-1"))))
        assert [int(e.attrs["data-natural-width"]) for e in dom if e.tag == "img"] == [160] * len(FRAME_TIMES)


def test_library_index_renders_without_any_report(tmp_path):
    html = render_library_index([ManifestRow(path="/v/x.mp4", key="x.mp4", status=FAILED, error="boom")], tmp_path)
    assert "boom" in html and "href=" not in html
    assert report_module.INDEX_NAME == "index.html"


# -- what later results may carry -----------------------------------------------------------------


@dataclass(frozen=True)
class BatchWithEvents(BatchCaption):
    """A batch as a result with events (``events`` in its dict) will have it."""

    events: tuple = ()

    def to_dict(self):
        return {**super().to_dict(), "events": list(self.events)}


def test_events_and_the_summary_evidence_show_when_the_result_has_them(thumbnails):
    batch = BatchWithEvents(1, 2, 0.0, 1.0, "A door opens.", events=({"time": 0.5, "label": "door <opens>"}, "bell"))
    result = CaptionResult(
        video_title="t",
        summary="s",
        batch_size=2,
        batches=[batch],
        model="m",
        fps=1.0,
        turnaround_time=1.0,
        extra={"summary_evidence": [{"text": "A door opens.", "batches": [1, 9]}]},
    )
    html = render_report(result, thumbnails, video_name="v.mp4")
    assert "<li>0:00.5 label: door &lt;opens&gt;</li>" in html and "<li>bell</li>" in html
    # Evidence links only to batches that exist.
    assert '<a href="#batch-1">[1]</a>' in html and "#batch-9" not in html
