#!/usr/bin/env bash
# Regenerate the TypeScript client's checked-in protobuf code (clients/typescript/src/gen)
# with protoc-gen-es v2 (pinned in clients/typescript/package.json), driven by buf.
# Inputs: protos/llmgateway/v1 and the vendored google.rpc protos under
# clients/typescript/vendor/proto. Deterministic: running it twice gives no diff.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS_DIR="$ROOT/clients/typescript"
BUF="${BUF:-$ROOT/tools/node_modules/.bin/buf}"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "gen_ts.sh: $tool is required (Node >= 20) but was not found on PATH" >&2
    exit 1
  fi
done

if [[ ! -d "$TS_DIR/node_modules" ]]; then
  (cd "$TS_DIR" && npm ci --no-audit --no-fund --silent)
fi
if [[ ! -x "$BUF" ]]; then
  (cd "$ROOT/tools" && npm ci --no-audit --no-fund --silent)
fi

cd "$ROOT"
"$BUF" generate --template clients/typescript/buf.gen.yaml
