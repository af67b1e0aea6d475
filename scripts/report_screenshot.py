"""Render the HTML report of a finished run and take a screenshot of it (the README's picture).

    python scripts/report_screenshot.py RESULT_JSON VIDEO [--png docs/images/report.png] [--html PATH]

The frames are decoded again here with ffmpeg at the batches' frame times (a run with
``--report`` makes its thumbnails from the frames it already holds; this script starts from a
result.json alone). result.json keeps a batch's first and last frame times and its frame
count: the frames in between are taken as evenly spaced, which is exact for uniform sampling
and close for adaptive sampling. The screenshot is taken by headless Debian ``chromium``
(``scripts/setup.sh --test`` installs it).

To remake docs/images/report.png::

    llm-caption big_bunny_5s_25fps.mp4 --model tests/fixtures/deepseek_vl2_reference/model \\
        --max-new-tokens 16 --sampling adaptive --fps 3 --scene-threshold 6 --duplicate-threshold 0.25 \\
        --output /tmp/r.json
    python scripts/report_screenshot.py /tmp/r.json big_bunny_5s_25fps.mp4
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from videocaption.outputs.report import Thumbnails, write_report
from videocaption.result import BatchCaption, CaptionResult

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=5000"]
BATCH_FIELDS = {"batch_id", "frames", "start_time", "end_time", "description", "error", "speech", "shot",
                "frames_skipped"}


def load_result(path: Path) -> CaptionResult:
    """A CaptionResult back from its result.json (what the report shows of it)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    batches = []
    for batch in document["batches"]:
        usage = batch.get("usage") or {}
        seconds = usage["generated_tokens"] / usage["tokens_per_second"] if usage.get("tokens_per_second") else 0.0
        batches.append(BatchCaption(**{key: value for key, value in batch.items() if key in BATCH_FIELDS},
                                    inference_time=seconds, prompt_tokens=usage.get("prompt_tokens"),
                                    image_tokens=usage.get("image_tokens"),
                                    generated_tokens=usage.get("generated_tokens")))
    return CaptionResult(video_title=document["video_title"], summary=document["summary"],
                         batch_size=document["batch_size"], batches=batches, model=document["model"],
                         fps=document["fps"], turnaround_time=document["turnaround_time"],
                         summary_rounds=document.get("summary_rounds", 1), transcript=document.get("transcript"))


def frame_times(batch: BatchCaption) -> list[float]:
    if batch.frames <= 1:
        return [batch.start_time]
    step = (batch.end_time - batch.start_time) / (batch.frames - 1)
    return [round(batch.start_time + index * step, 6) for index in range(batch.frames)]


def decode_frame(video: Path, seconds: float) -> Image.Image:
    """The first frame at or after ``seconds`` (ffmpeg seeks exactly, decoding from the keyframe before)."""
    png = subprocess.run(["ffmpeg", "-v", "error", "-ss", f"{seconds:.6f}", "-i", str(video), "-frames:v", "1",
                          "-f", "image2pipe", "-vcodec", "png", "-"], capture_output=True, check=True).stdout
    return Image.open(io.BytesIO(png))


def video_duration(video: Path) -> float | None:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                           str(video)], capture_output=True, text=True)
    try:
        return float(done.stdout.strip())
    except ValueError:
        return None


def screenshot(page: Path, png: Path, window: str) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("error: chromium is not installed (scripts/setup.sh --test installs it)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
                        f"--screenshot={png.resolve()}", page.resolve().as_uri()],
                       capture_output=True, check=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="a run's result.json")
    parser.add_argument("video", type=Path, help="the video it describes")
    parser.add_argument("--png", type=Path, default=REPO_ROOT / "docs" / "images" / "report.png")
    parser.add_argument("--html", type=Path, help="keep the report here (default: a temporary file)")
    parser.add_argument("--window", default="1200,1500", help="browser window WIDTH,HEIGHT (default: 1200,1500)")
    args = parser.parse_args()

    result = load_result(args.result)
    thumbnails = Thumbnails()
    for batch in result.batches:
        for seconds in frame_times(batch):
            thumbnails.add(seconds, decode_frame(args.video, seconds))
    with tempfile.TemporaryDirectory(prefix="report-") as folder:
        page = write_report(result, thumbnails, args.html or Path(folder) / "result.html",
                            video_name=args.video.name, video_duration=video_duration(args.video))
        screenshot(page, args.png, args.window)
    print(f"{args.png}: the report of {args.video.name} ({len(result.batches)} batches, {len(thumbnails)} frames)")


if __name__ == "__main__":
    main()
