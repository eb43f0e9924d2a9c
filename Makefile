# The two commands: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench bench-quick flamegraphs clean

$(BIN)/threshold: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml $(BIN)/threshold
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(BIN)/threshold
	$(BIN)/threshold threshold.demo:app --bind 127.0.0.1:8000

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(BIN)/threshold
	$(BIN)/python bench/run.py

bench-quick: $(BIN)/threshold
	$(BIN)/python bench/run.py --quick

# py-spy flame graphs of Threshold under each load, written to docs/perf/*.svg.
flamegraphs: $(BIN)/threshold
	$(BIN)/python bench/flame.py

# Autobahn testsuite (wstest, Python 2.7 env built on first use) against an ASGI echo app.
.PHONY: conformance-ws conformance-ws-quick
conformance-ws: $(BIN)/threshold
	$(BIN)/python conformance/run_autobahn.py

conformance-ws-quick: $(BIN)/threshold
	$(BIN)/python conformance/run_autobahn.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
