#!/usr/bin/env bash
# One command for each job; each installs what is missing first (see scripts/setup.sh).
#   ./run.sh demo [VIDEO] [options]   caption a video (default: the bundled clip)
#   ./run.sh test [pytest options]    lint, then run the test suite, one worker a CPU (-m "not slow": the fast suite)
#   ./run.sh lint                     ruff check and ruff format --check (what CI runs first)
#   ./run.sh bench NAME               run a benchmark from benchmarks/
set -euo pipefail
cd "$(dirname "$0")"
job=${1:-demo}
shift || true
lint() { .venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet .; }
case "$job" in
    demo)  scripts/setup.sh; LLM_CAPTION_PROG="./run.sh demo" exec .venv/bin/llm-caption "$@" ;;
    test)  scripts/setup.sh --test; lint; exec .venv/bin/python -m pytest -n auto "$@" ;;
    lint)  scripts/setup.sh --test; lint ;;
    bench) scripts/setup.sh --test; exec .venv/bin/python -m "benchmarks.$1" "${@:2}" ;;
    *) echo "usage: ./run.sh demo|test|lint|bench ..." >&2; exit 2 ;;
esac
