"""benchmarks/bench_upstream: where upstream cannot run, one line says why (no model is built here).

The comparison itself needs an upstream checkout and its venv (scripts/setup_upstream.sh) and
minutes of CPU, so it is a benchmark, not a test; what is testable without upstream is that every
way of not having it ends in one line naming the cause, before anything heavy starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.bench_upstream import summary_lines, upstream_problem


def test_no_checkout_given() -> None:
    assert upstream_problem(None, None) == "no --upstream checkout given"


def test_checkout_missing(tmp_path: Path) -> None:
    problem = upstream_problem(str(tmp_path / "nowhere"), sys.executable)
    assert problem is not None and "is not a DeepSeek-VL2 checkout" in problem and "\n" not in problem


def test_venv_python_missing(tmp_path: Path) -> None:
    (tmp_path / "deepseek_vl2" / "models").mkdir(parents=True)
    problem = upstream_problem(str(tmp_path), str(tmp_path / "venv" / "bin" / "python"))
    assert problem is not None and "does not exist" in problem and "setup_upstream.sh" in problem


def test_summary_ratio_is_upstream_over_ours() -> None:
    run = {"call_s": 10.0, "first_token_s": 4.0, "decode_per_token_s": 0.1}
    slow = {"call_s": 30.0, "first_token_s": 8.0, "decode_per_token_s": 0.3}
    lines = summary_lines({"ours": [run], "upstream": [slow]})
    ratios = [line for line in lines if "ratio" in line]
    assert len(ratios) == 3
    assert "3.00x (min)" in ratios[0] and "2.00x (min)" in ratios[1] and "3.00x (median)" in ratios[2]


def test_summary_ours_alone_has_no_ratio() -> None:
    run = {"call_s": 10.0, "first_token_s": 4.0, "decode_per_token_s": 0.1}
    assert not [line for line in summary_lines({"ours": [run]}) if "ratio" in line]
