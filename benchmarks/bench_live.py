"""Live captioning: latency from a frame's arrival to its caption record, and frames dropped.

Run from the repository root::

    python -m benchmarks.bench_live [--seconds 60] [--fps 1 2] [--batch-size 4] [--new-tokens 8]
                                    [--size 320x240] [--rate 25] [--model DIR]

For each sampling rate, FFmpeg serves a generated stream (``testsrc2``, H.264, MPEG-TS over TCP on
loopback, in real time with ``-re``) for ``--seconds``, and the CLI captions it live with the
tiny reference checkpoint (``--jsonl``). From the JSONL records: latency of each batch record
(wall clock of the record minus the arrival of the batch's last frame: the model call, plus any
wait behind earlier batches; and minus its first frame's: plus the time the batch took to
fill), frames dropped because the model was behind, and the CLI's resident memory at the first
record and at the end (a soak: ``--seconds 1800 --rate 100``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, TINY_MODEL, machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def run_once(fps: float, args: argparse.Namespace, folder: Path) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={args.size}:rate={args.rate}",
            "-t",
            str(args.seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            str(args.rate),
            "-f",
            "mpegts",
            f"tcp://127.0.0.1:{port}?listen=1",
        ],
        stdin=subprocess.DEVNULL,
    )
    jsonl = folder / f"live-{fps:g}.jsonl"
    cli = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "test_llm_caption.py"),
            f"tcp://127.0.0.1:{port}",
            "--fps",
            str(fps),
            "--batch-size",
            str(args.batch_size),
            "--model",
            args.model,
            "--device",
            "cpu",
            "--max-new-tokens",
            str(args.new_tokens),
            "--reconnect",
            "0",
            "--jsonl",
            str(jsonl),
            "--output",
            str(folder / f"result-{fps:g}.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    rss: list[float] = []
    while cli.poll() is None:
        if jsonl.exists() and '"batch"' in jsonl.read_text():
            sample = rss_mib(cli.pid)
            if sample is not None:
                rss.append(sample)
        time.sleep(1)
    server.wait()
    if cli.returncode != 0:
        raise SystemExit(f"the CLI failed ({cli.returncode}): {cli.stderr.read()}")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    latencies = sorted(r["latency"] for r in records if r["type"] == "batch")
    from_first = sorted(r["latency_first_frame"] for r in records if r["type"] == "batch")
    final = records[-1]
    return {
        "fps": fps,
        "batches": final["batches"],
        "frames": final["frames_analysed"],
        "dropped": final["dropped_frames"],
        "latency_median": statistics.median(latencies),
        "latency_p90": latencies[int(0.9 * (len(latencies) - 1))],
        "latency_max": latencies[-1],
        "first_median": statistics.median(from_first),
        "first_max": from_first[-1],
        "rss_first": rss[0] if rss else float("nan"),
        "rss_last": rss[-1] if rss else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of stream per run (default: 60)")
    parser.add_argument("--fps", type=float, nargs="+", default=[1.0, 2.0], help="sampling rates (default: 1 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8, help="max_new_tokens of each call (default: 8)")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--rate", type=int, default=25, help="frames per second of the stream (default: 25)")
    parser.add_argument("--model", default=str(TINY_MODEL))
    args = parser.parse_args()
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at the start")
    print(
        f"# {args.seconds:g} s of {args.size} at {args.rate} fps over TCP, batch_size {args.batch_size}, "
        f"max_new_tokens {args.new_tokens}, model {args.model}"
    )
    print(
        "| sampling fps | batches | frames described | frames dropped | latency from the last frame: median / "
        "p90 / max (s) | from the first frame: median / max (s) | RSS first record -> end (MiB) |"
    )
    print("|---:|---:|---:|---:|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for fps in args.fps:
            row = run_once(fps, args, Path(folder))
            print(
                f"| {row['fps']:g} | {row['batches']} | {row['frames']} | {row['dropped']} | "
                f"{row['latency_median']:.2f} / {row['latency_p90']:.2f} / {row['latency_max']:.2f} | "
                f"{row['first_median']:.2f} / {row['first_max']:.2f} | "
                f"{row['rss_first']:.0f} -> {row['rss_last']:.0f} |",
                flush=True,
            )
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
