# Two commands on a fresh machine: `make test` and `make demo`. Both build .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bytecode test test-fast demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Byte-compile ledger's own modules, as pip does for an installed package: an editable install
# otherwise compiles them at every start where PYTHONDONTWRITEBYTECODE is set (~0.1 s a command).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q ledger migrations

install: $(STAMP) bytecode

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The whole pipeline on the bundled examples/ against the local simulator, in demo/ (git-ignored):
# start `ledger sim` on a free port (SIM_PORT=N asks for that one and fails if it is taken), read the
# address it printed, `ledger run`, show the output tree and `ledger status`, stop the simulator.
# The demo talks only to the simulator it started: never to whatever else listens on some port.
# `make demo PROTOCOL=openai`: the same through the OpenAI-compatible /v1/videos provider.
SIM_PORT ?= 0
PROTOCOL ?= sora_hk
DEMO_INPUT_sora_hk = examples
DEMO_INPUT_openai = docs/providers
DEMO_ENV = PROVIDER=$(PROTOCOL) SORA_API_KEY=sora-demo0000000000000000000000000000 \
	OPENAI_API_KEY=sk-demo000000000000000000000000000000 NO_PROXY=127.0.0.1,localhost \
	LEDGER_DATABASE_URL=sqlite:///demo/ledger.db OUTPUT_DIR=demo/output
demo: $(STAMP) bytecode
	rm -rf demo && mkdir -p demo
	$(BIN)/ledger sim --port $(SIM_PORT) --gen-seconds 3 --protocol $(PROTOCOL) > demo/sim.log 2>&1 & echo $$! > demo/sim.pid; \
	trap 'kill $$(cat demo/sim.pid) 2>/dev/null' EXIT; \
	url=; for i in $$(seq 300); do \
		url=$$(sed -n 's/^Sora simulator listening on //p' demo/sim.log); \
		[ -n "$$url" ] || ! kill -0 $$(cat demo/sim.pid) 2>/dev/null && break; sleep 0.1; \
	done; \
	if [ -z "$$url" ]; then echo "make demo: the simulator did not start (demo/sim.log):" >&2; \
		cat demo/sim.log >&2; exit 1; fi; \
	echo "Simulator: $$url"; \
	$(DEMO_ENV) SORA_BASE_URL=$$url OPENAI_BASE_URL=$$url $(BIN)/ledger run --input-dir $(DEMO_INPUT_$(PROTOCOL)) && \
	echo && echo "demo/output:" && find demo/output -type f | sort && echo && \
	$(DEMO_ENV) SORA_BASE_URL=$$url OPENAI_BASE_URL=$$url $(BIN)/ledger status

bench: $(STAMP) bytecode
	$(BIN)/python bench/scan_bench.py
	$(BIN)/python bench/download_bench.py
	$(BIN)/python bench/work_bench.py
	$(BIN)/python bench/preflight_bench.py
	$(BIN)/python bench/race_bench.py
	$(BIN)/python bench/review_bench.py
	$(BIN)/python bench/scale_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
