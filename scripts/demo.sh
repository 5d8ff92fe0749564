#!/usr/bin/env bash
# Install finechain into .venv, then train and query the bundled demo chain (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
rm -rf demo-chain
finechain demo --out demo-chain
echo
echo "try: echo 'my card has not arrived yet' | .venv/bin/finechain predict demo-chain"
