#!/usr/bin/env bash
# A venv for the upstream DeepSeek-VL2 code, for benchmarks/bench_upstream.py only.
#
#   scripts/setup_upstream.sh CHECKOUT [VENV]
#
# CHECKOUT: a checkout of https://github.com/deepseek-ai/DeepSeek-VL2 (nothing of it is copied
# into this repository). VENV (default CHECKOUT/.venv-bench): created outside this repository,
# because upstream pins transformers 4.38.2 and numpy<2, which our .venv cannot hold.
#
# What differs from upstream's own requirements, and why:
#   * torch is ours (TORCH_SPEC, default torch==2.13.0; TORCH_INDEX_URL for a CPU-only build),
#     not upstream's 2.0.1, and every later install is constrained to that very build, so that
#     nothing (timm -> torchvision) swaps it for another torch;
#   * torchvision is the release built for that torch, without its dependencies;
#   * no xformers (CUDA only): benchmarks/upstream_runner.py stands in for the one function the
#     vision tower calls, with torch's SDPA; it also skips torchvision's C extension and gives
#     attrdict the collections aliases Python 3.10 removed (run-time shims, upstream untouched).
# Then: python -m benchmarks.bench_upstream --upstream CHECKOUT --upstream-python VENV/bin/python
set -euo pipefail

CHECKOUT=${1:?usage: scripts/setup_upstream.sh CHECKOUT [VENV]}
CHECKOUT=$(cd "$CHECKOUT" && pwd)
VENV=${2:-$CHECKOUT/.venv-bench}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.28.0}  # the release built for torch 2.13
say() { printf '[setup_upstream] %s\n' "$*" >&2; }

[ -d "$CHECKOUT/deepseek_vl2/models" ] || { say "$CHECKOUT is not a DeepSeek-VL2 checkout"; exit 2; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
else
  "${PIP[@]}" "$TORCH_SPEC"
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$VENV/bin/python" -c 'import torch; print("torch==" + torch.__version__)' >"$constraints"
say "torch pinned to $(cat "$constraints")"
"${PIP[@]}" -c "$constraints" --no-deps "$TORCHVISION_SPEC"
"${PIP[@]}" -c "$constraints" transformers==4.38.2 "numpy<2" timm attrdict einops sentencepiece \
  safetensors accelerate Pillow
cd "$(dirname "$0")/.."
"$VENV/bin/python" benchmarks/upstream_runner.py "$CHECKOUT" --probe
say "ready: --upstream $CHECKOUT --upstream-python $VENV/bin/python"
