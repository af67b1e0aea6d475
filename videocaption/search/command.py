"""The command line of search: ``--search QUERY`` / ``--ask QUESTION`` with ``--index PATH``, and ``--segments``.

The single-video command line adds these flags with :func:`add_search_arguments`; with
``--search`` or ``--ask`` it hands over to :func:`run_search_command` and captions nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from videocaption.errors import CaptionError
from videocaption.options import CaptionOptions
from videocaption.prompts import format_seconds
from videocaption.result import CaptionResult
from videocaption.search.segments import segments_from_result, write_segments

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "search and ask (over captioned videos)",
        "--index PATH is a segments or manifest Parquet file, a result.json, or a folder of results "
        "(docs/search.md); nothing is captioned then.",
    )
    group.add_argument("--search", metavar="QUERY", help="print the best moments for QUERY (BM25 full-text ranking)")
    group.add_argument(
        "--ask",
        metavar="QUESTION",
        help="answer QUESTION with the configured model from the best moments, citing them as [n]",
    )
    group.add_argument("--index", metavar="PATH", help="what --search and --ask read")
    group.add_argument("--top", type=int, metavar="N", help="moments to print or to give the model (default: 10, 8)")
    group.add_argument(
        "--embed-model",
        metavar="M",
        help="also rank by sentence embeddings (sentence-transformers: hub id or folder), fused with BM25 "
        "(reciprocal rank fusion); the vectors are cached beside the index",
    )
    group.add_argument("--json", action="store_true", help="print JSON instead of text (for a machine)")
    group.add_argument(
        "--segments",
        metavar="PATH",
        help="also write the segments table (Parquet, one row per batch) of this video's result",
    )


def search_requested(args: argparse.Namespace) -> bool:
    return args.search is not None or args.ask is not None


def check_search_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` (exit 2, one line) for search flags that make no sense as given."""
    if args.search is not None and args.ask is not None:
        parser.error("--search and --ask: give one of them")
    if search_requested(args):
        if not args.index:
            parser.error(f"--{'search' if args.search is not None else 'ask'} needs --index PATH")
        if args.video:
            parser.error("--search and --ask read --index PATH; they caption no INPUT")
        text = args.search if args.search is not None else args.ask
        if not text.strip():
            parser.error("the query is empty")
        if args.top is not None and args.top < 1:
            parser.error(f"--top must be at least 1, got {args.top}")
    else:
        if args.segments and (args.workers is not None or args.ray_address is not None):
            parser.error("--segments names one video's table; library mode writes segments.parquet beside its manifest")
        given = [
            flag
            for flag, value in (
                ("--index", args.index),
                ("--top", args.top),
                ("--json", args.json),
                ("--embed-model", args.embed_model),
            )
            if value
        ]
        if given:
            parser.error(f"{given[0]} goes with --search or --ask")


def run_search_command(args: argparse.Namespace, options: CaptionOptions) -> int:
    """Run ``--search`` or ``--ask``; returns the exit code (0, or 2 for bad input: an index that
    cannot be read, a model that cannot be loaded). An unsupported answer still exits 0: it is
    marked in the text and by ``supported: false`` in the JSON."""
    from videocaption.search.index import SearchIndex

    try:
        index = SearchIndex(args.index)
        retrieve = index.search
        if args.embed_model:
            from videocaption.search.embeddings import Embeddings, hybrid_search

            embeddings = Embeddings(index, args.embed_model)

            def retrieve(query: str, top: int):
                return hybrid_search(index, embeddings, query, top)

        if args.search is not None:
            hits = retrieve(args.search, args.top or 10)
            if args.json:
                print(json.dumps({"query": args.search, "hits": [hit.to_dict() for hit in hits]}, ensure_ascii=False))
            else:
                for hit in hits:
                    segment = hit.segment
                    print(
                        f"{hit.rank}. {segment.path} {format_seconds(segment.start_time)}-"
                        f"{format_seconds(segment.end_time)} score {hit.score:.2f}: {hit.snippet}"
                    )
                if not hits:
                    print(f"no moment matches {args.search!r}", file=sys.stderr)
            return EXIT_OK
        from videocaption.backends import load_model
        from videocaption.search.ask import ask

        answer = ask(args.ask, index, load_model(options), options, top=args.top or 8, retrieve=retrieve)
    except CaptionError as error:
        if os.environ.get("LLM_CAPTION_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        print(answer.text)
        if not answer.supported:
            why = f"cites {answer.invalid}, not among the moments given" if answer.invalid else "cites no moment"
            print(f"(unsupported: the answer {why})")
        for citation in answer.citations():
            print(
                f"[{citation['n']}] {citation['video']} "
                f"{format_seconds(citation['start'])}-{format_seconds(citation['end'])}"
            )
    return EXIT_OK


def write_result_segments(result: CaptionResult, video: str | os.PathLike, options: CaptionOptions, path: str) -> None:
    """``--segments PATH`` of a single-video run: its result's table, written atomically."""
    document = result.to_dict()
    write_segments(segments_from_result(document, path=str(Path(video).resolve()), key=str(options.result_path)), path)
