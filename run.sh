#!/usr/bin/env bash
# One command for each job; each installs what is missing first (see scripts/setup.sh).
#   ./run.sh demo [VIDEO] [options]   caption a video (default: the bundled clip)
#   ./run.sh test [pytest options]    run the test suite
#   ./run.sh bench NAME               run a benchmark from benchmarks/
set -euo pipefail
cd "$(dirname "$0")"
job=${1:-demo}
shift || true
case "$job" in
    demo)  scripts/setup.sh; exec .venv/bin/python test_llm_caption.py "$@" ;;
    test)  scripts/setup.sh --test; exec .venv/bin/python -m pytest "$@" ;;
    bench) scripts/setup.sh --test; exec .venv/bin/python -m "benchmarks.$1" "${@:2}" ;;
    *) echo "usage: ./run.sh demo|test|bench ..." >&2; exit 2 ;;
esac
