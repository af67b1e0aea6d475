#!/usr/bin/env bash
# Installs everything llm-caption needs, idempotently; a second run takes seconds.
#
#   1. FFmpeg 4 runtime libraries (BabitMF 0.2.0 links against libavcodec.so.58 & co.):
#      native on Ubuntu 22.04; on Debian 12 from Debian 11 "bullseye", pinned so that nothing
#      else is ever taken from there. Also the ffmpeg/ffprobe tools (input checks, tests).
#   2. A Python 3.11 virtual environment in .venv (BabitMF 0.2.0 ships cp311 wheels only).
#   3. torch, then BabitMF-GPU where an NVIDIA driver is present (BabitMF otherwise), then the
#      project itself, editable (`pip install -e .[all]`, `.[test]` with --test: pyproject.toml),
#      which gives the `llm-caption` command in .venv/bin.
#   4. g++ and Python's headers, which TorchInductor needs for the compiled CPU decode kernels
#      (non-fatal: without them the runtime decodes with its eager layers).
#   5. With --test: espeak-ng, the speech synthesiser of the transcription tests, and Debian's
#      chromium, the headless browser the HTML report's tests load the page in.
#
# Environment: PYTHON (interpreter to use), TORCH_SPEC (default torch==2.13.0),
# TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu for a CPU-only torch).
set -euo pipefail

cd "$(dirname "$0")/.."
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
VENV=.venv
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
FFMPEG4_LIBS="libavcodec58 libavformat58 libavfilter7 libavutil56 libswscale5 libswresample3 libavdevice58"

say() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_nvidia() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

install_system_libs() {
    if ldconfig -p | grep -q 'libavcodec.so.58 ' && ldconfig -p | grep -q 'libavdevice.so.58 ' \
        && command -v ffprobe >/dev/null 2>&1; then
        return
    fi
    . /etc/os-release
    say "installing FFmpeg 4 runtime libraries for BabitMF ($PRETTY_NAME)"
    if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" != bullseye ]; then
        # Debian 12 ships FFmpeg 5; bullseye's FFmpeg 4 libraries install beside it.
        echo "deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main" \
            | as_root tee /etc/apt/sources.list.d/bullseye-ffmpeg4.list >/dev/null
        printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n\nPackage: *\nPin: release n=bullseye-security\nPin-Priority: 100\n' \
            | as_root tee /etc/apt/preferences.d/bullseye-ffmpeg4 >/dev/null
    fi
    as_root apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $FFMPEG4_LIBS ffmpeg >/dev/null
}

install_kernel_build_tools() {
    # TorchInductor compiles the CPU decode kernels (docs/performance.md) with g++, and their C++
    # wrapper includes Python.h, which Debian's interpreter keeps in a package of its own. Without
    # them the runtime decodes with its eager layers, so a failed install is not fatal.
    local missing=() include
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [ -f "$include/Python.h" ] || missing+=(libpython3.11-dev)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]} (for the compiled CPU decode kernels)"
    { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || say "${missing[*]} could not be installed: decoding on CPU will run without the compiled kernels"
}

find_python() {
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$candidate"; return
        fi
    done
    say "Python 3.11 is needed (BabitMF 0.2.0 has cp311 wheels only); set PYTHON=/path/to/python3.11"
    exit 1
}

install_python_packages() {
    local bmf_package=BabitMF==0.2.0 torch_args=("$TORCH_SPEC")
    have_nvidia && bmf_package=BabitMF-GPU==0.2.0
    [ -n "${TORCH_INDEX_URL:-}" ] && torch_args+=(--index-url "$TORCH_INDEX_URL")
    local project=".[all]"
    [ "$WITH_TEST" = 1 ] && project=".[test]"
    stamp_of() { (cat pyproject.toml; echo "$1 $bmf_package $TORCH_SPEC ${TORCH_INDEX_URL:-}"; cat "$0") \
                 | sha256sum | cut -c1-16; }
    local stamp test_stamp
    stamp="$(stamp_of "$project")"
    test_stamp="$(stamp_of ".[test]")"  # the test extra holds every other one: enough for the demo too
    if [ -f "$VENV/.setup-stamp" ] && grep -qx -e "$stamp" -e "$test_stamp" "$VENV/.setup-stamp"; then
        return
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$(find_python)" -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    "$VENV/bin/python" -c 'import torch' 2>/dev/null || { say "installing $TORCH_SPEC"; "${pip[@]}" "${torch_args[@]}"; }
    say "installing $bmf_package and the project ($project)"
    "${pip[@]}" "$bmf_package" -e "$project"
    echo "$stamp" >>"$VENV/.setup-stamp"
}

install_test_tools() {
    # espeak-ng speaks the sentences the transcription tests place under their videos; chromium
    # renders the HTML report headless (tests/test_report.py).
    [ "$WITH_TEST" = 1 ] || return 0
    local missing=()
    command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]} (for the tests)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_libs
install_test_tools
install_python_packages
install_kernel_build_tools
