#!/usr/bin/env bash
# The Python package keops_rs (python/): a virtual environment at .venv/ (numpy, pytest, maturin,
# jax (CPU) and matplotlib from the package index, made once), the package built into it by pip
# (maturin, release mode, sharing the workspace's target directory), then its tests.
#   scripts/python.sh venv    make .venv/ with numpy, pytest, maturin, jax and matplotlib
#                             (scripts/setup.sh runs it)
#   scripts/python.sh setup   venv, then build and install the package into it
#   scripts/python.sh test    setup, then pytest python/tests (fails when a test fails)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
python=${PYTHON:-python3}

venv() {
    if ! command -v "$python" >/dev/null; then
        echo "python: $python not found; install Python 3.9 or later with venv" >&2
        exit 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "python: creating $venv" >&2
        "$python" -m venv "$venv"
    fi
    # Installed once; later runs find them and skip the index.
    if ! "$venv/bin/python" -c "import numpy, pytest, maturin" 2>/dev/null; then
        "$venv/bin/pip" install -q --disable-pip-version-check "numpy" "pytest" "maturin>=1.16,<2"
    fi
    # keops_rs.jax's tests and the examples' plots; jax from the index is the CPU build.
    if ! "$venv/bin/python" -c "import jax, matplotlib" 2>/dev/null; then
        "$venv/bin/pip" install -q --disable-pip-version-check "jax" "matplotlib"
    fi
    # ptxas (CUDA 12.9) checks the PTX the NVPTX back end emits, on machines without a GPU.
    if ! "$venv/bin/python" -c "import nvidia.cuda_nvcc" 2>/dev/null; then
        "$venv/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-nvcc-cu12"
    fi
}

setup() {
    venv
    # maturin from the environment (no isolated build environment to download each time);
    # the release build shares target/ with cargo.
    PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install -q --disable-pip-version-check \
        --no-build-isolation --no-deps --force-reinstall ./python
}

case "${1:-}" in
venv) venv ;;
setup) setup ;;
test)
    setup
    "$venv/bin/python" -m pytest -q python/tests
    ;;
*)
    echo "usage: scripts/python.sh venv | setup | test" >&2
    exit 2
    ;;
esac
