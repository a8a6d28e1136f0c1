# mabeam — the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard proto/mabeam/v1/*.proto)

.PHONY: setup demo test test-fast proto proto-check lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs the project and its dev tools into .venv (re-run when pyproject.toml changes).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m mabeam.dev.demo

test: setup proto-check lint typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

proto: setup
	BIN=$(BIN) tools/protogen.sh

# Regenerates into a temp dir and fails if the committed code differs.
proto-check: setup
	BIN=$(BIN) tools/protogen.sh check

lint: setup
	$(BIN)/ruff check .

# mypy --strict on the pure cores (STYLE.md); the daemons' I/O shells are checked by tests.
STRICT := mabeam/keys.py mabeam/errors.py mabeam/etcd meshd/view.py meshd/validation.py coordinator/mechanisms agentd/supervision.py
typecheck: setup
	$(BIN)/mypy --strict $(STRICT)

bench: setup
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
