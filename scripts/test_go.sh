#!/usr/bin/env bash
# Check the Go client (clients/go): generated code matches protos/, gofmt, go vet, and
# go test (unit tests plus the conformance suite against
# `.venv/bin/python -m tests.support.conformance_server`, so run `make` first).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1; then
  echo "test_go.sh: 'go' is not on PATH; install Go 1.26 to test clients/go" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] && [ "${LLMGATEWAY_SKIP_CONFORMANCE:-}" != 1 ]; then
  echo "test_go.sh: .venv/bin/python is missing (the conformance server needs it): run 'make' first" >&2
  exit 1
fi

echo "== generated code (clients/go/llmgatewayv1) against protos/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/gen_go.sh "$tmp"
if ! diff -r "$tmp/clients/go/llmgatewayv1" clients/go/llmgatewayv1; then
  echo "test_go.sh: clients/go/llmgatewayv1 drifted from protos/: run 'bash scripts/gen_go.sh' and commit" >&2
  exit 1
fi

cd clients/go
echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "test_go.sh: not gofmt-formatted:" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "== go vet ./..."
go vet ./...
echo "== go test ./..."
go test -count=1 ./...
