"""Search and ask over captioned results: the segments table, BM25 ranking on known text, the
index cache, citations checked in code, grounded summaries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from videocaption.captioning.summary import CitedSummary, ground, split_citations
from videocaption.cli.main import main
from videocaption.search.ask import check_citations
from videocaption.search.index import SearchIndex, cache_path, fts_query
from videocaption.search.segments import read_segments, segments_from_result, write_segments

KITCHEN = [
    ("A man chops onions on a wooden board.", None),
    ("A red kettle boils on the stove while steam rises.", "the tea is ready"),
    ("A cat jumps onto the counter and knocks over a cup.", None),
]
GARDEN = [
    ("Children play football on a green lawn.", None),
    ("A dog runs after a red ball near the fence.", "fetch it boy"),
    ("An old man waters tomato plants with a hose.", "the harvest will be good"),
]


def result(descriptions, title: str, *, events: dict | None = None) -> dict:
    batches = []
    for index, (description, speech) in enumerate(descriptions):
        batch = {
            "batch_id": index + 1,
            "frames": 2,
            "description": description,
            "start_time": 2.0 * index,
            "end_time": 2.0 * index + 1.0,
        }
        if speech is not None:
            batch["speech"] = speech
        if events and index == 0:
            batch["events"] = events
        batches.append(batch)
    return {"video_title": title, "model": "m", "batches": batches, "summary": "s"}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "kitchen.json").write_text(json.dumps(result(KITCHEN, "Breakfast in the Kitchen")))
    garden = result(GARDEN, "A Summer Garden", events={"sounds": ["doorbell ringing"]})
    (folder / "garden.json").write_text(json.dumps(garden))
    return folder


def top(index: SearchIndex, query: str) -> tuple[str, float]:
    hit = index.search(query, top=1)[0]
    return Path(hit.segment.path).stem, hit.segment.start_time


def test_bm25_ranks_the_moment_that_holds_the_words(results: Path) -> None:
    index = SearchIndex(results)
    assert len(index) == 6
    assert top(index, "kettle boiling") == ("kitchen", 2.0)  # porter stemming: boiling ~ boils
    assert top(index, "chopped onion") == ("kitchen", 0.0)
    assert top(index, "red ball dog") == ("garden", 2.0)  # "red" is in two moments: the rarer words decide
    assert top(index, "harvest") == ("garden", 4.0)  # only spoken
    assert top(index, "doorbell") == ("garden", 0.0)  # only in the batch's events
    assert index.search("submarine volcano") == []
    hits = index.search("red", top=10)
    assert len(hits) == 2 and [hit.rank for hit in hits] == [1, 2] and hits[0].score >= hits[1].score
    assert "[red]" in hits[0].snippet


def test_a_query_is_words_only_whatever_it_holds(results: Path) -> None:
    assert fts_query('cat" OR NEAR(* -x') == '"cat" OR "or" OR "near" OR "x"'
    assert top(SearchIndex(results), 'cat" NEAR(*') == ("kitchen", 4.0)
    assert SearchIndex(results).search("!!! ***") == []


def test_the_index_is_cached_and_rebuilt_when_the_results_change(results: Path) -> None:
    assert SearchIndex(results).built
    again = SearchIndex(results)
    assert not again.built and cache_path(results).is_file()
    kitchen = results / "kitchen.json"
    document = json.loads(kitchen.read_text())
    document["batches"][0]["description"] = "A submarine surfaces."
    kitchen.write_text(json.dumps(document))
    os.utime(kitchen, ns=(0, os.stat(kitchen).st_mtime_ns + 10**9))
    changed = SearchIndex(results)
    assert changed.built and top(changed, "submarine") == ("kitchen", 0.0)


def test_the_segments_table_is_read_by_duckdb_as_is(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = segments_from_result(
        result(GARDEN, "A Summer Garden", events={"sounds": ["doorbell"]}), path="/v/garden.mp4", key="v/garden.mp4"
    )
    path = write_segments(rows, tmp_path / "segments.parquet")
    table = duckdb.sql(
        f"SELECT path, batch_id, start_time, end_time, speech, events, title, model "
        f"FROM read_parquet('{path}') ORDER BY batch_id"
    ).fetchall()
    assert table[0] == ("/v/garden.mp4", 1, 0.0, 1.0, None, '{"sounds": ["doorbell"]}', "A Summer Garden", "m")
    assert table[1][4] == "fetch it boy" and table[1][5] is None  # events: null where a batch has none
    assert read_segments(path) == rows
    assert top(SearchIndex(path), "tomato") == ("garden", 4.0)


def test_citations_are_checked_against_what_was_given() -> None:
    assert check_citations("Yes [1]. Also [2, 5] and [9].", given=3) == ([1, 2], [5, 9])
    assert check_citations("No idea.", given=3) == ([], [])
    assert check_citations("From [2-4] and [1\u20132].", given=3) == ([2, 3, 1], [4])


def test_a_grounded_summary_keeps_clean_text_and_drops_citations_of_nothing() -> None:
    assert split_citations("A door opens [1]. Then [2, 3] a cat enters. [4]") == [
        ("A door opens.", [1]),
        ("Then a cat enters.", [2, 3, 4]),
    ]
    assert split_citations("It spans the video [1-3].") == [("It spans the video.", [1, 2, 3])]
    items = [(0.0, 1.0, "door"), (2.0, 5.0, "part summary of two batches")]
    batches = [(1, 0.0, 1.0), (2, 2.0, 3.0), (3, 4.0, 5.0)]
    summary, evidence, dropped = ground(CitedSummary("A door opens [1]. A cat walks in [2][7].", 2, items), batches)
    assert summary == "A door opens. A cat walks in."
    assert evidence == [
        {"text": "A door opens.", "batches": [1], "start": 0.0, "end": 1.0},
        {"text": "A cat walks in.", "batches": [2, 3], "start": 2.0, "end": 5.0},
    ]
    assert dropped == 1


def test_search_prints_ranked_moments_and_json(results: Path, capsys) -> None:
    assert main(["--search", "tea kettle", "--index", str(results), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"1. {results / 'kitchen.json'} 0:02.0-0:03.0 score ")
    assert main(["--search", "tomato", "--index", str(results), "--json"]) == 0
    [hit, *_] = json.loads(capsys.readouterr().out)["hits"]
    assert (hit["start"], hit["end"], hit["batch_id"]) == (4.0, 5.0, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--search", "x"], "--search needs --index PATH"),
        (["--search", "x", "--ask", "y", "--index", "i"], "give one of them"),
        (["--search", " ", "--index", "i"], "the query is empty"),
        (["--index", "i"], "--index goes with --search or --ask"),
        (["--search", "x", "--index", "i", "--top", "0"], "--top must be at least 1"),
    ],
)
def test_bad_search_flags_are_one_line_and_exit_2(arguments, message, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(arguments)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_an_index_that_cannot_be_read_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["--search", "x", "--index", str(tmp_path / "missing")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "no such file or folder" in line
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert main(["--search", "x", "--index", str(tmp_path / "bad.parquet")]) == 2


@pytest.mark.parametrize("bogus", [False, True])
def test_ask_answers_citing_the_moments_and_marks_an_unsupported_answer(results: Path, capsys, bogus: bool) -> None:
    from fake_openai import FakeOpenAI, ScriptedCaptions

    script = ScriptedCaptions(describe=lambda colour, seconds: "", answer_with="kettle", bogus_citation=bogus)
    with FakeOpenAI(chat=script) as server:
        arguments = ["--ask", "Where does the kettle boil?", "--index", str(results)]
        arguments += ["--backend", "openai", "--api-base", server.url, "--model", "m", "--max-retries", "0"]
        assert main([*arguments, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert main(arguments) == 0
        text = capsys.readouterr().out
    assert answer["citations"] == [
        {
            "n": answer["citations"][0]["n"],
            "video": str(results / "kitchen.json"),
            "start": 2.0,
            "end": 3.0,
            "batch_id": 2,
        }
    ]
    assert answer["supported"] is not bogus and answer["invalid_citations"] == ([42] if bogus else [])
    assert ("(unsupported: the answer cites [42], not among the moments given)" in text) is bogus
    assert f"[{answer['citations'][0]['n']}] {results / 'kitchen.json'} 0:02.0-0:03.0" in text
    [prompt] = {request.body for request in server.requests if b"Question:" in request.body}
    assert b"kettle boils" in prompt


def test_ask_with_nothing_found_does_not_ask_the_model(results: Path, capsys) -> None:
    from fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        arguments = ["--ask", "submarine?", "--index", str(results), "--json"]
        assert main([*arguments, "--backend", "openai", "--api-base", server.url, "--model", "m"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["supported"] is False and answer["citations"] == []
    assert not [request for request in server.requests if request.method == "POST"]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sentence_transformers")
    from tiny_embedder import build_tiny_embedder

    return build_tiny_embedder(tmp_path_factory.mktemp("embedder"))


@pytest.mark.slow
def test_hybrid_search_embeds_once_and_again_when_the_segments_change(results: Path, embedder: Path, capsys) -> None:
    from videocaption.search.embeddings import RRF_K, Embeddings, hybrid_search

    index = SearchIndex(results)
    first = Embeddings(index, str(embedder))
    assert first.computed == 6 and first.vectors.shape == (6, 32) and first.path.is_file()
    hits = hybrid_search(index, first, "red kettle", top=6)
    assert sorted(hit.segment.batch_id for hit in hits) == [1, 1, 2, 2, 3, 3]  # every segment, fused
    # RRF: BM25's best (the kettle) scores by its rank in both lists; the random-weight embedder's
    # own order is arbitrary, so which segment leads is not asserted.
    bm25_best = index.segment(index.rank("red kettle", 6)[0][0])
    assert Path(bm25_best.path).stem == "kitchen" and bm25_best.start_time == 2.0
    embedding_rank = [index.segment(rowid) for rowid in first.rank("red kettle", 6)].index(bm25_best) + 1
    kettle = next(hit for hit in hits if hit.segment == bm25_best)
    assert kettle.score == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + embedding_rank))
    assert Embeddings(SearchIndex(results), str(embedder)).computed == 0  # the cache is reused
    (results / "more.json").write_text(json.dumps(result([("A submarine surfaces.", None)], "Sea")))
    again = Embeddings(SearchIndex(results), str(embedder))
    assert again.computed == 7  # the segments changed: embedded again
    arguments = ["--search", "submarine", "--index", str(results), "--embed-model", str(embedder), "--json"]
    assert main(arguments) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["description"] == "A submarine surfaces."


@pytest.mark.slow
def test_an_embedding_model_that_cannot_be_loaded_is_one_line(results: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("sentence_transformers")
    assert main(["--search", "x", "--index", str(results), "--embed-model", str(tmp_path / "nothing")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --embed-model ")
