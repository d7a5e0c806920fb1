# Two commands on a fresh machine: `make test` and `make demo`. Both build .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SIM_PORT ?= 8765

.PHONY: install test test-fast demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/ledger scan --input-dir input/examples --dry-run

bench: $(STAMP)
	$(BIN)/python bench/scan_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
