#!/usr/bin/env bash
# Generate the Python stubs (messages, gRPC services, typed .pyi) from protos/ into $1.
set -euo pipefail
out=${1:?usage: gen_protos.sh OUT_DIR}
bin=.venv/bin
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(pwd)
rm -f "$out"/llmgateway/v1/*_pb2*.py "$out"/llmgateway/v1/*_pb2*.pyi
mapfile -t files < <(cd protos && find llmgateway -name '*.proto' | sort)
(cd protos && "$root/$bin/python" -m grpc_tools.protoc -I. \
  --plugin=protoc-gen-mypy="$root/$bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$root/$bin/protoc-gen-mypy_grpc" \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "${files[@]}" 2> >(grep -v "^Writing mypy" >&2))
for d in "$out"/llmgateway "$out"/llmgateway/v1; do
  [ -f "$d/__init__.py" ] || echo '"""Generated from protos/; do not edit. Run `make protos`."""' > "$d/__init__.py"
done
touch "$out"/llmgateway/py.typed
