"""Headless Debian chromium for the tests that look at a rendered page (scripts/setup.sh --test installs it).

A page is loaded from its file; ``--dump-dom`` prints the DOM after its scripts (and a test's
probe script) ran, ``--screenshot`` saves what a person would see.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium")
# What runs here as root, offline and without a display: no sandbox, no GPU, nothing that phones home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]
TIMEOUT_S = 120


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=True,
        )


def with_probe(page: Path, head_script: str = "", body_script: str = "") -> Path:
    """A copy of ``page`` beside it with test scripts added (the page itself stays as users get it)."""
    html = page.read_text(encoding="utf-8")
    if head_script:
        html = html.replace("<head>", f"<head><script id='probe-head'>{head_script}</script>", 1)
    if body_script:
        html = html.replace("</body>", f"<script id='probe-body'>{body_script}</script></body>", 1)
    probed = page.with_name(f"probed-{page.name}")
    probed.write_text(html, encoding="utf-8")
    return probed


def dump_dom(page: Path, window: str = "1200,800") -> str:
    """The page's DOM as HTML once it has loaded and its scripts ran."""
    return _chromium(f"--window-size={window}", "--dump-dom", page.resolve().as_uri()).stdout


def screenshot(page: Path, png: Path, window: str = "1200,1600") -> Path:
    _chromium(f"--window-size={window}", f"--screenshot={png}", page.resolve().as_uri())
    return png


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.text = tag, attrs, ""
        self.classes = set((attrs.get("class") or "").split())


class _Collector(HTMLParser):
    """Every element of a document, in document order, with the text directly inside it."""

    VOID = {"img", "meta", "link", "br", "hr", "input", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data):
        for element in self._open:  # text counts for every enclosing element
            element.text += data


def elements(html: str) -> list[Element]:
    collector = _Collector()
    collector.feed(html)
    return collector.elements
