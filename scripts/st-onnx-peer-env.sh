#!/usr/bin/env bash
# The environment for sentence-transformers' ONNX backends, the peer of `python -m benchmarks export-embeddings`:
# its ONNX extra (optimum-onnx) pins transformers < 4.58, older than finechain's, so it gets a virtual environment of
# its own. Usage: bash scripts/st-onnx-peer-env.sh [FOLDER]   (default /tmp/stpeer), then
#   python -m benchmarks export-embeddings --peer-python FOLDER/bin/python
set -euo pipefail
FOLDER=${1:-/tmp/stpeer}
PYTHON=${PYTHON:-python3}
[ -x "$FOLDER/bin/python" ] || "$PYTHON" -m venv "$FOLDER"
"$FOLDER/bin/python" -m pip install -q --upgrade pip
"$FOLDER/bin/python" -m pip install -q "torch==2.13.0"   # pinned: an unpinned torch pulls a CUDA build on Linux
"$FOLDER/bin/python" -m pip install -q "transformers<4.58" sentence-transformers "optimum-onnx[onnxruntime]"
"$FOLDER/bin/python" -c "import sentence_transformers, optimum.onnxruntime; print('sentence-transformers', sentence_transformers.__version__)"
