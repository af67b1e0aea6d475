"""Search over 100,000 segments: index build time, then query latency (BM25, SQLite FTS5).

Run from the repository root::

    python -m benchmarks.bench_search [--segments 100000] [--queries 50]

Why: issue 24 asks that a search over a large library answers in under 1 s once the index is
built. The segments are synthetic (descriptions drawn from a 2,000-word vocabulary with a
Zipf-like spread, a third with speech), written as a real ``segments.parquet``; the index is built
from it (cold: read Parquet, fill FTS5, write the cache) and opened again (warm: the cache is
reused), then each query (2-4 words, common and rare) is timed as ``SearchIndex.search(top=10)``.
Prints the load (``uptime``) with the figures, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from videocaption.search.index import SearchIndex
from videocaption.search.segments import Segment, write_segments

ROOT = Path(__file__).resolve().parent.parent


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words)


def synthetic(count: int, rng: random.Random) -> list[Segment]:
    words = vocabulary(2000, rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf-like: a few words are common
    rows = []
    for index in range(count):
        video, batch = divmod(index, 50)
        description = " ".join(rng.choices(words, weights, k=rng.randint(15, 40))) + "."
        speech = " ".join(rng.choices(words, weights, k=10)) if index % 3 == 0 else None
        rows.append(
            Segment(
                path=f"/library/video{video:05d}.mp4",
                key=f"library/video{video:05d}.mp4",
                batch_id=batch + 1,
                start_time=batch * 4.0,
                end_time=batch * 4.0 + 3.0,
                description=description,
                speech=speech,
                title=f"Video {video}",
                model="synthetic",
            )
        )
    return rows, words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(24)
    rows, words = synthetic(args.segments, rng)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "segments.parquet"
        started = time.perf_counter()
        write_segments(rows, path)
        written = time.perf_counter() - started
        started = time.perf_counter()
        index = SearchIndex(path)
        built = time.perf_counter() - started
        assert index.built and len(index) == args.segments
        index.close()
        started = time.perf_counter()
        index = SearchIndex(path)
        opened = time.perf_counter() - started
        assert not index.built
        queries = [" ".join(rng.sample(words[: 50 if n % 2 else 2000], rng.randint(2, 4))) for n in range(args.queries)]
        index.search(queries[0])  # burn-in: the first query pages the index in
        times = []
        for query in queries:
            started = time.perf_counter()
            index.search(query, top=10)
            times.append(time.perf_counter() - started)
        index.close()
        # The whole command, as a user runs it: Python's start-up, imports, the cache's signature
        # check and one query.
        command = [sys.executable, str(ROOT / "test_llm_caption.py"), "--search", queries[1], "--index", str(path)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        whole = time.perf_counter() - started
        assert done.stdout.startswith("1. ")
    print(
        f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (uptime), cpus {os.cpu_count()}"
    )
    print(f"{args.segments} segments: parquet written in {written:.2f} s")
    print(f"index built (read parquet, FTS5, cache written) in {built:.2f} s; cached index opened in {opened:.3f} s")
    times.sort()
    print(
        f"{len(times)} queries, top 10: median {statistics.median(times) * 1000:.1f} ms, "
        f"p95 {times[int(len(times) * 0.95) - 1] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms "
        "(half of them of common words)"
    )
    print(f"the whole command (llm-caption --search ... --index segments.parquet): {whole:.2f} s")


if __name__ == "__main__":
    main()
