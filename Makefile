# The two commands: `make run` and `make test`. Both create .venv themselves.
# .venv holds the pure-Python package (editable: source edits take effect at once);
# `make test` also runs the suite against the mypyc-compiled hot modules, built in
# place in a copy of the tree (build/compiled), where they shadow the .py files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest pytest-compiled compiled bench bench-quick flamegraphs clean

$(BIN)/threshold: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	THRESHOLD_NO_COMPILE=1 $(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml $(BIN)/threshold
	THRESHOLD_NO_COMPILE=1 $(BIN)/python -m pip install -q -e '.[test]'
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

# A copy of the tree (tracked and new files) with the hot modules compiled in place.
compiled: $(VENV)/.test-installed
	rm -rf build/compiled/tests && mkdir -p build/compiled
	git ls-files -z --cached --others --exclude-standard | \
		xargs -0 cp -p --parents -t build/compiled
	cd build/compiled && THRESHOLD_COMPILE=1 ../../$(BIN)/python setup.py -q build_ext --inplace >/dev/null

pytest-compiled: compiled
	cd build/compiled && ../../$(BIN)/python -c \
		"import threshold.protocols.http1 as m; assert m.__file__.endswith('.so'), m.__file__"
	cd build/compiled && ../../$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck pytest pytest-compiled

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
	rm -rf $(VENV) build *.egg-info *__mypyc*.so
	find threshold -name '*.so' -delete
