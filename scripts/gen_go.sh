#!/usr/bin/env bash
# Regenerate the Go stubs (clients/go/llmgatewayv1) from protos/llmgateway/v1.
#
#   bash scripts/gen_go.sh            # regenerate in place
#   bash scripts/gen_go.sh OUT_BASE   # write OUT_BASE/clients/go/llmgatewayv1 instead
#
# Installs the pinned protoc-gen-go and protoc-gen-go-grpc into tools/go/bin (skipped
# when the pinned versions are already there) and runs buf with local plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0

command -v go >/dev/null 2>&1 || { echo "gen_go.sh: 'go' is not on PATH" >&2; exit 1; }

bin="$root/tools/go/bin"
mkdir -p "$bin"

# install NAME PACKAGE VERSION: go install PACKAGE@VERSION unless bin/NAME already is it.
install() {
  local name=$1 pkg=$2 version=$3
  if [ -x "$bin/$name" ] && go version -m "$bin/$name" 2>/dev/null \
      | awk -v p="$pkg" -v v="$version" '$1 == "path" && $2 == p { path = 1 } $1 == "mod" && $3 == v { mod = 1 } END { exit !(path && mod) }'; then
    return 0
  fi
  echo "gen_go.sh: installing $pkg@$version into tools/go/bin" >&2
  GOBIN="$bin" GOFLAGS=-mod=mod go install "$pkg@$version"
}
install protoc-gen-go "$PROTOC_GEN_GO" "$PROTOC_GEN_GO_VERSION"
install protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC" "$PROTOC_GEN_GO_GRPC_VERSION"

buf=tools/node_modules/.bin/buf
if [ ! -x "$buf" ]; then
  (cd tools && npm ci --silent --no-audit --no-fund)
fi

out_base=${1:-}
gen_dir=clients/go/llmgatewayv1
if [ -n "$out_base" ]; then
  mkdir -p "$out_base"
  out_base=$(cd "$out_base" && pwd)
  rm -rf "${out_base:?}/$gen_dir"
  "$buf" generate protos --template clients/go/buf.gen.yaml \
    --path protos/llmgateway/v1 -o "$out_base"
else
  rm -f "$gen_dir"/*.pb.go
  "$buf" generate protos --template clients/go/buf.gen.yaml --path protos/llmgateway/v1
fi
