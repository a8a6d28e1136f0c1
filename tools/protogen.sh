#!/usr/bin/env bash
# Generates the Python code for proto/mabeam/v1 into mabeam/v1, or with "check"
# regenerates into a temp dir and fails when the committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
out=.
if [ "${1:-}" = "check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
"$BIN/python" -m grpc_tools.protoc -I proto \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/mabeam/v1/*.proto
[ "${1:-}" = "check" ] || exit 0
status=0
for f in $(cd "$out" && find mabeam -type f | sort); do
  cmp -s "$out/$f" "$f" || { echo "generated code is stale: $f (run 'make proto')"; status=1; }
done
for f in $(find mabeam/v1 -name '*_pb2*' | sort); do
  [ -f "$out/$f" ] || { echo "generated file has no .proto source: $f"; status=1; }
done
[ $status = 0 ] && echo "proto: generated code is current"
exit $status
