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

# The whole pipeline on the bundled examples against the local simulator, in demo/ (git-ignored):
# start `ledger sim`, `ledger run`, show the output tree and `ledger status`, stop the simulator.
# `make demo PROTOCOL=openai`: the same through the OpenAI-compatible /v1/videos provider.
PROTOCOL ?= sora_hk
DEMO_INPUT_sora_hk = input/examples
DEMO_INPUT_openai = docs/providers
DEMO_ENV = PROVIDER=$(PROTOCOL) SORA_BASE_URL=http://127.0.0.1:$(SIM_PORT)/v1 \
	SORA_API_KEY=sora-demo0000000000000000000000000000 OPENAI_BASE_URL=http://127.0.0.1:$(SIM_PORT)/v1 \
	OPENAI_API_KEY=sk-demo000000000000000000000000000000 LEDGER_DATABASE_URL=sqlite:///demo/ledger.db OUTPUT_DIR=demo/output
demo: $(STAMP)
	rm -rf demo && mkdir -p demo
	$(BIN)/ledger sim --port $(SIM_PORT) --gen-seconds 3 --protocol $(PROTOCOL) > demo/sim.log 2>&1 & echo $$! > demo/sim.pid; \
	trap 'kill $$(cat demo/sim.pid) 2>/dev/null' EXIT; \
	for i in $$(seq 50); do grep -q listening demo/sim.log && break; sleep 0.1; done; \
	$(DEMO_ENV) $(BIN)/ledger run --input-dir $(DEMO_INPUT_$(PROTOCOL)) && \
	echo && echo "demo/output:" && find demo/output -type f | sort && echo && \
	$(DEMO_ENV) $(BIN)/ledger status

bench: $(STAMP)
	$(BIN)/python bench/scan_bench.py
	$(BIN)/python bench/download_bench.py
	$(BIN)/python bench/work_bench.py
	$(BIN)/python bench/preflight_bench.py
	$(BIN)/python bench/review_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
