#!/usr/bin/env bash
# Create .venv (if missing) and install finechain with the CPU build of PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on Linux.
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
python -c "import finechain, torch; print(f'finechain {finechain.__version__}, torch {torch.__version__}')"
