#!/usr/bin/env bash
# Fail when the checked-in Python stubs differ from what the protos generate.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/gen_protos.sh "$tmp"
if ! diff -r -x __pycache__ "$tmp/llmgateway" clients/python/src/llmgateway; then
  echo "generated stubs drifted from protos/: run 'make protos' and commit" >&2
  exit 1
fi
echo "generated stubs match protos/"
