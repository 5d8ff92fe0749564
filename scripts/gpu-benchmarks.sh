#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one go (about 10 minutes on an H100). Needs the project
# installed with a CUDA build of PyTorch and the public datasets in ../shared/datasets (or $FINECHAIN_DATASETS).
# Results go to benchmarks/results/{train_gpu,train_gpu_conll,infer_gpu,memory_gpu}.json, then docs/benchmarks.md
# is regenerated.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to PyTorch')"
python -m benchmarks train --device cuda --tasks sst2 --train-examples 0 --peers full --batch-sizes 64,128,256 --no-fp32 --without-graphs-too --output train_gpu
python -m benchmarks train --device cuda --tasks conll2003 --train-examples 0 --peers full --batch-sizes 32,64,128 --no-fp32 --output train_gpu_conll
python -m benchmarks infer --device cuda --output infer_gpu
python -m benchmarks memory --device cuda --output memory_gpu
python -m benchmarks report
