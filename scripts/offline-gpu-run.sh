#!/usr/bin/env bash
# The GPU benchmarks on an offline machine prepared with scripts/offline-gpu-bundle.sh (copy the repository
# with its .gpu/ folder there). Installs the carried wheels into /tmp/finechain-site, widens the backbone to fp32 in
# /tmp/finechain-minilm, then runs the given steps in order (results under $OUT, default /tmp/finechain-out):
#   tests: the CUDA tests of the training step; infer: the GPU inference suite (output infer_gpu);
#   bench: the SST-2 GPU training suite; fewshot: the few-shot suite against SetFit, one process per seed at once
#   (bundle with SETS=banking77 for the default), merged into one results file (output few_shot_gpu).
#   Usage: bash scripts/offline-gpu-run.sh [STEP,...]  (default tests,bench)
# Environment: TASK (sst2), SIZES (64,128,256), NAME (train_gpu), INFER_NAME (infer_gpu), PY (python3),
# DEVICE (cuda; cpu for a dry run of the script); for fewshot: FEW_TASK (banking77), PER_CLASS (64), SEEDS
# (default: the first of 13-17 that the carried results file has no SetFit accuracy for: one seed of SetFit on
# Banking77 at 64 per class takes ~460 s on an H200, one per session's device time), VARIANTS ("few-shot recipe
# (min_steps 50),plain"), FEW_NAME (few_shot_gpu), FEW_LIMIT_S (seconds before the seeds' processes are stopped,
# 3600; what they measured is merged all the same), FEW_APPEND (1: keep the
# records of other seeds from the carried benchmarks/results/<FEW_NAME>.json, so seeds measured in several sessions add
# up; 0: only this run's).
# Exit 2: an unknown step; 3, 4, 5, 6: the tests, infer, bench or fewshot step failed.
set -o pipefail
cd "$(dirname "$0")/.."
for step in ${1//,/ }; do  # a misspelt step would otherwise run nothing and exit 0
  case $step in tests|infer|bench|fewshot|both) ;; *) echo "offline-gpu-run.sh: unknown step '$step'; fix: use tests, infer, bench, fewshot (comma-separated) or both" >&2; exit 2 ;; esac
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
if [[ $steps == *,fewshot,* ]]; then
  # one process per seed at once (a seed's SetFit run is thousands of small steps, far from filling the GPU alone); each
  # saves its records after its seed, and prints each one, so a stopped process's are read back from its log
  parts=$(mktemp -d) pids=()
  seeds=${SEEDS:-$($PY - "benchmarks/results/${FEW_NAME:-few_shot_gpu}.json" <<'PY'
import json
import sys
from pathlib import Path

path = Path(sys.argv[1])
records = json.loads(path.read_text()) if path.exists() else []
done = {r["variant"].rpartition(", seed ")[2] for r in records if r["system"] == "setfit" and r["metric"] == "accuracy"}
print(next((s for s in ("13", "14", "15", "16", "17") if s not in done), "13"))  # all five there: seed 13 again
PY
)}
  echo "fewshot: seeds $seeds"
  for seed in ${seeds//,/ }; do
    FINECHAIN_RESULTS=$parts timeout "${FEW_LIMIT_S:-3600}" $PY -m benchmarks few-shot --device "${DEVICE:-cuda}" --tasks "${FEW_TASK:-banking77}" \
      --per-class "${PER_CLASS:-64}" --seeds "$seed" --variants "${VARIANTS:-few-shot recipe (min_steps 50),plain}" \
      --output "part_$seed" >"$parts/seed_$seed.log" 2>&1 &
    pids+=("$seed:$!")
  done
  for entry in "${pids[@]}"; do  # say which seeds failed or ran out of time (124): their log holds why
    wait "${entry#*:}"; code=$?; [ $code -eq 0 ] || echo "fewshot: seed ${entry%%:*} ended with exit code $code (124: stopped at FEW_LIMIT_S)" >&2
  done
  cat "$parts"/seed_*.log >"$OUT/fewshot.log"
  $PY - "$parts" "$OUT" "${FEW_NAME:-few_shot_gpu}" "${FEW_TASK:-banking77}" "${PER_CLASS:-64}" "$seeds" \
    "${VARIANTS:-few-shot recipe (min_steps 50),plain}" "${FEW_LIMIT_S:-3600}" "${FEW_APPEND:-1}" <<'PY' || exit 6
import json
import sys
from pathlib import Path

parts, out, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
step = dict(zip(["task", "per_class", "seeds", "variants", "limit_s", "append"], sys.argv[4:], strict=True))
records, runs, meta, earlier_runs = [], [], {}, []
earlier = Path("benchmarks/results") / f"{name}.json"
if step.pop("append") == "1" and earlier.exists():  # other seeds' records from earlier sessions (this run's seeds: replaced)
    ours = tuple(f", seed {seed}" for seed in step["seeds"].split(","))
    records = [r for r in json.loads(earlier.read_text()) if not r["variant"].endswith(ours)]
    earlier_runs = json.loads(earlier.with_suffix(".meta.json").read_text()).get("runs", [])
    print(f"kept {len(records)} records of other seeds from {earlier}")
for log in sorted(parts.glob("seed_*.log")):  # every record a process printed, saved or not
    records += [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"suite": ')]
for part in sorted(parts.glob("part_*.meta.json")):
    meta = json.loads(part.read_text())
    runs.append({k: v for k, v in meta.items() if k not in {"versions", "device", "date"}})
(out / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
shared = {k: meta[k] for k in ("versions", "device", "date") if k in meta}
step["finished_seeds"] = len(runs)  # a seed stopped at the limit left only the records it printed
(out / f"{name}.meta.json").write_text(json.dumps({"step": step, "runs": earlier_runs + runs, **shared}, indent=1) + "\n")
print(f"merged {len(records)} records of {len(runs)} finished seeds into {out / name}.json")
PY
fi
