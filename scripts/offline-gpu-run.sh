#!/usr/bin/env bash
# The GPU benchmarks on an offline machine prepared with scripts/offline-gpu-bundle.sh (copy the repository
# with its .gpu/ folder there). Installs the carried wheels into /tmp/finechain-site, widens the backbone to fp32 in
# /tmp/finechain-minilm, then runs the given steps in order (results under $OUT, default /tmp/finechain-out):
#   tests: the CUDA tests of the training step; infer: the GPU inference suite (output infer_gpu);
#   bench: the SST-2 GPU training suite. Usage: bash scripts/offline-gpu-run.sh [STEP,...]  (default tests,bench)
# Environment: TASK (sst2), SIZES (64,128,256), NAME (train_gpu), INFER_NAME (infer_gpu), PY (python3),
# DEVICE (cuda; cpu for a dry run of the script). Exit 2: an unknown step; 3, 4, 5: the tests, infer or bench step failed.
set -o pipefail
cd "$(dirname "$0")/.."
for step in ${1//,/ }; do  # a misspelt step would otherwise run nothing and exit 0
  case $step in tests|infer|bench|both) ;; *) echo "offline-gpu-run.sh: unknown step '$step'; fix: use tests, infer, bench (comma-separated) or both" >&2; exit 2 ;; esac
done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
OUT=${OUT:-/tmp/finechain-out}; mkdir -p "$OUT"
PY=${PY:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/finechain-site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/finechain-site:$PWD/.gpu/shim:$PWD/src:$PWD FINECHAIN_DATASETS=$PWD/.gpu/datasets FINECHAIN_RESULTS=$OUT
$PY - <<'PY' || exit 1
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

source, target = Path(".gpu/minilm16"), Path("/tmp/finechain-minilm")
shutil.copytree(source, target, dirs_exist_ok=True)
weights = load_file(source / "model.safetensors")
save_file({k: v.float().contiguous() for k, v in weights.items()}, target / "model.safetensors", metadata={"format": "pt"})
PY
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
steps=",${1:-tests,bench},"; [ "$steps" = ",both," ] && steps=",tests,bench,"
if [[ $steps == *,tests,* ]]; then
  $PY -m pytest -q -x -p no:cacheprovider -W error::RuntimeWarning tests/test_step.py tests/test_dropout.py 2>&1 | tee "$OUT/pytest.log" | tail -25 || exit 3
fi
if [[ $steps == *,infer,* ]]; then
  $PY -m benchmarks infer --device "${DEVICE:-cuda}" --output "${INFER_NAME:-infer_gpu}" 2>&1 | tee "$OUT/infer.log" | grep -v "it/s\]" | tail -30 || exit 4
fi
if [[ $steps == *,bench,* ]]; then
  $PY -m benchmarks train --device "${DEVICE:-cuda}" --tasks "${TASK:-sst2}" --train-examples 0 --peers full --batch-sizes "${SIZES:-64,128,256}" \
    --no-fp32 --without-graphs-too --output "${NAME:-train_gpu}" 2>&1 | tee "$OUT/bench.log" | grep -v "it/s\]" | tail -60 || exit 5
fi
