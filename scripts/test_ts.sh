#!/usr/bin/env bash
# Check the TypeScript client (clients/typescript): install (npm ci) when needed, check
# the generated code does not drift from the protos, type-check (strict), build, and run
# the tests with `node --test` (unit tests, and the shared conformance scenarios against
# the harness of tests/support/conformance_server.py, which needs .venv: run `make` first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS_DIR="$ROOT/clients/typescript"
GEN_DIR="clients/typescript/src/gen"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "test_ts.sh: $tool is required (Node >= 20) but was not found on PATH" >&2
    exit 1
  fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "test_ts.sh: Node >= 20 is required, found $(node --version)" >&2
  exit 1
fi
if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
  echo "test_ts.sh: $ROOT/.venv/bin/python is missing (the conformance harness needs it): run \`make\` first" >&2
  exit 1
fi

cd "$TS_DIR"
if [[ ! -d node_modules ]]; then
  npm ci --no-audit --no-fund --silent
fi
TSC="$TS_DIR/node_modules/.bin/tsc"

echo "== generated code drift (scripts/gen_ts.sh)"
gen_digest() {
  (cd "$ROOT" && find "$GEN_DIR" -type f -print0 | sort -z | xargs -0 sha256sum)
}
before="$(gen_digest)"
bash "$ROOT/scripts/gen_ts.sh"
after="$(gen_digest)"
if [[ "$before" != "$after" ]]; then
  echo "test_ts.sh: $GEN_DIR drifted from the protos; run scripts/gen_ts.sh and commit the result:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  (cd "$ROOT" && git status --short -- "$GEN_DIR") >&2
  exit 1
fi
(cd "$ROOT" && git diff --exit-code -- "$GEN_DIR")

echo "== tsc --noEmit (strict)"
"$TSC" -p tsconfig.json --noEmit

echo "== build"
rm -rf dist
"$TSC" -p tsconfig.json

echo "== node --test"
node --test --test-timeout=60000 dist/test/*.test.js
