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
	$(BIN)/pybabel -q compile -d ledger/locale -D ledger

install: $(STAMP) bytecode

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The whole pipeline on the bundled examples/ against the local simulator, in demo/ (git-ignored):
# start `ledger sim` on a free port (SIM_PORT=N asks for that one and fails if it is taken), read the
# address it printed, `ledger run`, show the output tree and `ledger status`, stop the simulator.
# The demo talks only to the simulator it started: never to whatever else listens on some port.
# `make demo PROTOCOL=openai|seedance|kling|wan|hailuo`: the same through that provider (its demo
# storyboard is docs/providers/storyboard_PROTOCOL.json; the demo keys are placeholders the
# simulator accepts, and every provider's base URL points at the simulator).
SIM_PORT ?= 0
PROTOCOL ?= sora_hk
DEMO_INPUT = $(if $(filter sora_hk,$(PROTOCOL)),examples,demo/input)
DEMO_ENV = PROVIDER=$(PROTOCOL) SORA_API_KEY=sora-demo0000000000000000000000000000 \
	OPENAI_API_KEY=sk-demo000000000000000000000000000000 ARK_API_KEY=ark-demo000000000000000000000000 \
	KLING_API_KEY=kling-demo00000000000000000000000 DASHSCOPE_API_KEY=sk-demo0000000000000000000000000 \
	MINIMAX_API_KEY=minimax-demo000000000000000000000 NO_PROXY=127.0.0.1,localhost \
	LEDGER_DATABASE_URL=sqlite:///demo/ledger.db OUTPUT_DIR=demo/output
DEMO_URLS = SORA_BASE_URL=$$url OPENAI_BASE_URL=$$url ARK_BASE_URL=$$url KLING_BASE_URL=$$url \
	DASHSCOPE_BASE_URL=$$url MINIMAX_BASE_URL=$$url
demo: $(STAMP) bytecode
	rm -rf demo && mkdir -p demo
	if [ "$(PROTOCOL)" = openai ]; then mkdir -p demo/input && cp docs/providers/storyboard_gateway.json demo/input/; \
	elif [ "$(PROTOCOL)" != sora_hk ]; then mkdir -p demo/input && cp docs/providers/storyboard_$(PROTOCOL).json demo/input/; fi
	$(BIN)/ledger sim --port $(SIM_PORT) --gen-seconds 3 --protocol $(PROTOCOL) > demo/sim.log 2>&1 & echo $$! > demo/sim.pid; \
	trap 'kill $$(cat demo/sim.pid) 2>/dev/null' EXIT; \
	url=; for i in $$(seq 300); do \
		url=$$(sed -n 's/^Sora simulator listening on //p' demo/sim.log); \
		[ -n "$$url" ] || ! kill -0 $$(cat demo/sim.pid) 2>/dev/null && break; sleep 0.1; \
	done; \
	if [ -z "$$url" ]; then echo "make demo: the simulator did not start (demo/sim.log):" >&2; \
		cat demo/sim.log >&2; exit 1; fi; \
	echo "Simulator: $$url"; \
	$(DEMO_ENV) $(DEMO_URLS) $(BIN)/ledger run --input-dir $(DEMO_INPUT) && \
	echo && echo "demo/output:" && find demo/output -type f | sort && echo && \
	$(DEMO_ENV) $(DEMO_URLS) $(BIN)/ledger status

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
