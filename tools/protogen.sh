#!/usr/bin/env bash
# Generates the code for proto/mabeam/v1 in every language, or with "check" regenerates into a
# temp dir and fails when the committed code differs.
#
#   Python      mabeam/v1/                    grpcio-tools (+ mypy-protobuf stubs)
#   Go          clients/go/gen/mabeamv1/      protoc-gen-go, protoc-gen-go-grpc (pinned, in clients/go/.bin)
#   TypeScript  clients/typescript/src/gen/   @bufbuild/protoc-gen-es (pinned in package-lock.json)
#   Rust        clients/rust/mabeam/src/gen/  tonic-prost-build (clients/rust/codegen, pinned in Cargo.lock)
#
# Every generator runs on the one protoc this machine has: the one inside grpcio-tools
# (tools/protoc wraps it for Rust's prost-build). `make proto` installs the plugins first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export BIN
mode=${1:-write}
out=.
if [ "$mode" = "check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
protoc() { "$BIN/python" -m grpc_tools.protoc "$@"; }
protos=(proto/mabeam/v1/*.proto)

# Python
protoc -I proto \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  "${protos[@]}"

# Go: import paths are mapped here (M options) so the .proto files stay free of language options.
gomod=github.com/mabeam/mabeam/clients/go
gopkg=$gomod/gen/mabeamv1
maps=()
for p in "${protos[@]}"; do maps+=("M${p#proto/}=$gopkg;mabeamv1"); done
goopts=$(IFS=,; echo "module=$gomod,${maps[*]}")
mkdir -p "$out/clients/go"
protoc -I proto \
  --plugin=protoc-gen-go=clients/go/.bin/protoc-gen-go --plugin=protoc-gen-go-grpc=clients/go/.bin/protoc-gen-go-grpc \
  --go_out="$out/clients/go" --go_opt="$goopts" --go-grpc_out="$out/clients/go" --go-grpc_opt="$goopts" \
  "${protos[@]}"

# TypeScript: messages and service descriptors (protobuf-es v2), plus google.rpc for error details.
mkdir -p "$out/clients/typescript/src/gen"
protoc -I proto/third_party -I proto \
  --plugin=protoc-gen-es=clients/typescript/node_modules/.bin/protoc-gen-es \
  --es_out="$out/clients/typescript/src/gen" --es_opt=target=ts,import_extension=js \
  "${protos[@]}" proto/third_party/google/rpc/status.proto proto/third_party/google/rpc/error_details.proto

# Rust: prost messages and tonic clients, one file per package. The generator's build is cached per
# machine (not per checkout): every worktree and clean clone on a host shares one cargo target dir.
mkdir -p "$out/clients/rust/mabeam/src/gen"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mabeam/cargo-target}"
PROTOC="$PWD/tools/protoc" cargo run -q --manifest-path clients/rust/Cargo.toml -p mabeam-codegen -- \
  "$out/clients/rust/mabeam/src/gen" proto

[ "$mode" = "check" ] || exit 0
status=0
generated=(mabeam/v1 clients/go/gen clients/typescript/src/gen clients/rust/mabeam/src/gen)
for dir in "${generated[@]}"; do
  for f in $(cd "$out" && find "$dir" -type f | sort); do
    cmp -s "$out/$f" "$f" || { echo "generated code is stale: $f (run 'make proto')"; status=1; }
  done
done
for f in $(find mabeam/v1 -name '*_pb2*' -not -path '*/__pycache__/*'; find "${generated[@]:1}" -type f) ; do
  [ -f "$out/$f" ] || { echo "generated file has no .proto source: $f"; status=1; }
done
[ $status = 0 ] && echo "proto: generated code is current (Python, Go, TypeScript, Rust)"
exit $status
