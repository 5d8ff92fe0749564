#!/usr/bin/env bash
# Regenerate the Python gRPC stubs from src/finechain/serve/proto/finechain.proto (needs grpcio-tools; a test checks
# that the committed stubs match the .proto).
set -euo pipefail
cd "$(dirname "$0")/../src"
python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. finechain/serve/proto/finechain.proto
