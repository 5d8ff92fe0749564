#!/usr/bin/env bash
# Install finechain into .venv, train and query the bundled demo chain, serve it and ask the server, then export it to
# ONNX and query the export (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
rm -rf demo-chain
finechain demo --out demo-chain
echo
echo "a flow: finechain predict demo-chain --flow opinions (entities first, then the sentiment around each person/org)"
echo 'Angela Merkel praised the plan, but Reuters called it thin' | finechain predict demo-chain --flow opinions
echo
echo "serving it: finechain serve demo-chain --port 8765 (REST on loopback; the page at http://127.0.0.1:8765/)"
finechain serve demo-chain --port 8765 --no-access-log &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
python - <<'PY'
import json, time, urllib.request

for _ in range(600):  # the server loads and warms up the chain first
    try:
        if urllib.request.urlopen("http://127.0.0.1:8765/readyz", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.2)
body = json.dumps({"texts": ["my card has not arrived yet", "Angela Merkel visited Paris"], "tasks": ["intent", "entities"]}).encode()
request = urllib.request.Request("http://127.0.0.1:8765/v1/predict", data=body, headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=60))
for text, byTask in zip(["my card has not arrived yet", "Angela Merkel visited Paris"], answer["predictions"]):
    intent = byTask["intent"]
    entities = ", ".join(f"{e['text']}/{e['type']}" for e in byTask["entities"]["entities"]) or "-"
    print(f"POST /v1/predict  {text!r}: intent {intent['label']} ({intent['score']:.2f}), entities {entities}")
print(f"server timings: {answer['timings']}")
PY
echo
echo "exporting it: finechain export demo-chain --out demo-onnx (one ONNX graph; runs with ONNX Runtime, no PyTorch;"
echo "its flows come along: the same flow, on the export)"
kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true
finechain export demo-chain --out demo-onnx --overwrite
echo 'Angela Merkel visited Paris' | finechain predict demo-onnx --flow opinions
echo
echo "try: echo 'my card has not arrived yet' | .venv/bin/finechain predict demo-chain"
echo "     .venv/bin/finechain serve demo-chain   # then open http://127.0.0.1:8000/"
