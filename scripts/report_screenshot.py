"""Caption the sample clip with ``--report`` and take a screenshot of the report (the README's picture).

    python scripts/report_screenshot.py [--png docs/images/report.png] [--model DIR] [--keep DIR]

The run is a real one (the tiny random-weight checkpoint by default, so the text is noise),
with adaptive sampling tuned so that the timeline shows shots and skipped near-duplicates; the
report's thumbnails are the frames that run held. The screenshot is taken by headless Debian
``chromium`` (``scripts/setup.sh --test`` installs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from videocaption import caption_video

REPO_ROOT = Path(__file__).resolve().parent.parent
# Relative to the checkout (the script runs there): the report shows them as given.
SAMPLE_CLIP = "big_bunny_5s_25fps.mp4"
TINY_MODEL = "tests/fixtures/deepseek_vl2_reference/model"
CHROMIUM_FLAGS = [
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
# Sampled densely with low thresholds: the 5 s clip then has a few shots and skipped frames.
RUN = {
    "max_new_tokens": 16,
    "sampling": "adaptive",
    "fps": 3.0,
    "scene_threshold": 6.0,
    "duplicate_threshold": 0.25,
    "device": "cpu",
}


def screenshot(page: Path, png: Path, window: str) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("error: chromium is not installed (scripts/setup.sh --test installs it)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={window}",
                f"--screenshot={png.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, default=REPO_ROOT / "docs" / "images" / "report.png")
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--window", default="1200,1500")
    parser.add_argument("--keep", type=Path, help="keep the result and the report in this folder")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)
    with tempfile.TemporaryDirectory(prefix="report-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        page = folder / "result.html"
        caption_video(
            SAMPLE_CLIP, model=args.model, result_path=str(folder / "result.json"), report_path=str(page), **RUN
        )
        screenshot(page, args.png, args.window)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
