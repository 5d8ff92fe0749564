#!/usr/bin/env bash
# Install finechain into .venv, lint, then run the whole test suite (unit + integration + doctests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
ruff check src tests benchmarks scripts
lint-imports  # the layering contracts in pyproject.toml
# two workers, each on its own share of the CPUs, costly files kept in one (tests/conftest.py); "-n 0" runs one process
python -m pytest src tests benchmarks -q -p no:cacheprovider --durations=10 -n 2 "$@"
