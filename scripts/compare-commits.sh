#!/usr/bin/env bash
# One benchmark suite at an earlier commit and at this checkout, in turns, on the same machine (before/after a change):
#   bash scripts/compare-commits.sh BASE ROUNDS SUITE [suite options...]
# e.g.  bash scripts/compare-commits.sh 4094fb1 2 infer --no-pipeline
# The earlier commit runs from a temporary git worktree with its own code and benchmarks, in this .venv. Results:
# benchmarks/results/<suite>_<base>_<k>.json (earlier commit) and <suite>_head_<k>.json (this checkout), k = 1..ROUNDS.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: bash scripts/compare-commits.sh BASE ROUNDS SUITE [suite options...]" >&2
  exit 2
fi
base=$1 rounds=$2 suite=$3
shift 3
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
  echo "error: '$base' is not a commit here (fix: give a commit hash or tag of this repository)" >&2
  exit 2
fi
case $rounds in '' | *[!0-9]* | 0) echo "error: ROUNDS '$rounds' must be a whole number of 1 or more" >&2; exit 2 ;; esac
. .venv/bin/activate
export HF_HUB_OFFLINE=1 FINECHAIN_DATASETS=${FINECHAIN_DATASETS:-$PWD/../shared/datasets} FINECHAIN_RESULTS=$PWD/benchmarks/results
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$tree" "$base" >/dev/null
short=$(git rev-parse --short "$base")
name=${suite//-/_}
for k in $(seq 1 "$rounds"); do
  (cd "$tree" && PYTHONPATH="$tree/src:$tree" python -m benchmarks "$suite" "$@" --output "${name}_${short}_$k")
  python -m benchmarks "$suite" "$@" --output "${name}_head_$k"
done
