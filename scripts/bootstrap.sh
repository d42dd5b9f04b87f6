#!/usr/bin/env bash
# Installs what is missing into the current Python environment, torch first.
# On a machine without an NVIDIA GPU torch is pinned to 2.13.0 (a CPU wheel): an unpinned torch
# would pull several GB of CUDA packages. On a GPU machine an installed torch is kept as it is.
# Usage: scripts/bootstrap.sh [test]   (with "test", the test extras are installed too)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "bootstrap: installing torch (CUDA build) for the GPU on this machine"
        "${PIP[@]}" torch
    else
        echo "bootstrap: installing torch==2.13.0 (CPU)"
        "${PIP[@]}" torch==2.13.0
    fi
fi

extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi
if ! "$PYTHON" - "$extras" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import auto_round_mllm, transformers, typer, rich, safetensors, accelerate, datasets, PIL  # noqa: F401
assert version("transformers").startswith("5.")
if sys.argv[1]:
    import pytest, auto_round, lm_eval, ruff, num2words, compressed_tensors  # noqa: F401
    import platform
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        import triton  # noqa: F401
# the console script on PATH must be ours: auto-round installs one with the same name
import shutil
script = shutil.which("auto-round-mllm")
assert script and "auto_round_mllm.cli.app" in open(script, encoding="utf-8", errors="replace").read()
PY
then
    echo "bootstrap: installing auto-round-mllm${extras} and its dependencies"
    "${PIP[@]}" -e ".${extras}"
    # installed last, so our auto-round-mllm script replaces auto-round's
    "${PIP[@]}" --no-deps --force-reinstall -e .
fi
