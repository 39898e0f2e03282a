#!/usr/bin/env bash
# Generate the Python stubs for proto/tdn/v1 into OUT (default: the repository root, so that
# they land in tdn/v1/). tests/unit/test_proto_stubs.py runs this into a temporary folder and
# fails when the committed stubs differ.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
mkdir -p "$out/tdn/v1"
python -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  "$root"/proto/tdn/v1/*.proto
