# llmgateway: `make run` starts the gateway offline, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
BUF := tools/node_modules/.bin/buf
GEN_DIR := clients/python/src
PROTO_FILES := $(shell find protos -name '*.proto' -not -path 'protos/google/*')

.PHONY: run test lint typecheck protos check-protos buf-lint hadolint unit bench clean clients clients-go clients-ts

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e clients/python -e '.[dev]'
	touch $@

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --silent --no-audit --no-fund
	touch $@

## run: start the gateway on the embedded default (mock provider, SQLite)
run: $(VENV)/.installed
	@echo "In another terminal, try: $(BIN)/llmgateway-client complete --model default \"Hello\""
	$(BIN)/llmgateway run $(if $(CONFIG),--config $(CONFIG),)

## protos: regenerate the checked-in Python, Go and TypeScript code from protos/
protos: $(VENV)/.installed $(BUF)
	bash scripts/gen_protos.sh $(GEN_DIR)
	bash scripts/gen_go.sh
	bash scripts/gen_ts.sh

## check-protos: fail when the checked-in stubs drift from the protos
check-protos: $(VENV)/.installed
	bash scripts/check_protos.sh

buf-lint: $(BUF)
	cd protos && ../$(BUF) lint && ../$(BUF) breaking --against ../protos/baseline.binpb

hadolint: $(VENV)/.installed
	$(BIN)/hadolint Dockerfile

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy
	$(BIN)/mypy --strict --exclude '^bench/out/' bench

## clients: the Go and TypeScript clients (drift of their generated code, vet/tsc, their
## tests and the shared conformance suite against the real gateway)
clients: clients-go clients-ts

clients-go: $(VENV)/.installed $(BUF)
	bash scripts/test_go.sh

clients-ts: $(VENV)/.installed $(BUF)
	bash scripts/test_ts.sh

## test: every check and the whole test suite
test: lint typecheck check-protos buf-lint hadolint clients
	$(BIN)/pytest -q

## bench: the overhead benchmark (writes bench/RESULTS.md)
bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) tools/node_modules .mypy_cache .pytest_cache .ruff_cache
