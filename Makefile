# hierfl — one-command set-up on a fresh machine.
#   make demo    set up, then run a real federation (brokers started and stopped for you)
#   make test    set up, then run the whole test suite against real brokers
#   make simtest the deterministic fault simulator (SEEDS=1000 seeds; docs/simulation.md)
VENV   ?= .venv
PY     := $(VENV)/bin/python
HIERFL := $(VENV)/bin/hierfl
# torch first, pinned: a CPU wheel (any other spec may pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: setup system-deps demo test lint simtest bench bench-compare compose-test clean

setup: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[edge,sim,dev]"
	touch $@

# mosquitto from the OS packages when we may install it; otherwise hierfl falls back to
# the pure-Python amqtt broker (slower, same behaviour).
system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing mosquitto (apt)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) \
	      || echo "mosquitto install failed: using the amqtt fallback"; \
	  else echo "mosquitto not found: hierfl will use the amqtt fallback broker"; fi; \
	fi

demo: setup
	$(HIERFL) sim digits --fogs 4 --edges 20 --rounds 30 --out runs/demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check hierfl tests benchmarks
	$(VENV)/bin/mypy hierfl

# The deterministic fault simulator over seeds 0..SEEDS-1, one worker per CPU (docs/simulation.md);
# make simtest SEEDS=100000 for a long run. A failing seed prints the command that replays it.
SEEDS ?= 1000
simtest: setup
	$(HIERFL) simtest --seeds 0:$(SEEDS)

bench: setup
	$(PY) benchmarks/digits.py

# hierfl and Flower 1.42 on the same scenarios, interleaved on this machine (benchmarks/README.md):
# hierfl processes and in-process mode, Flower's simulation engine and its deployment runtime,
# each run in a fresh process. Flower runs in its own venv ($(FLOWER_VENV), made here: torch pin
# first, hierfl, then flwr[simulation] via install_flower.sh), so hierfl's venv is never changed.
# A few minutes with COMPARE_ARGS=--skip-deployment (digits-20 alone: ~2 min on 2 cores);
# Flower's deployment runtime adds ~40 min (~1 min per round; COMPARE_ARGS="--deployment-rounds
# 3" runs 3 rounds of it per scenario, reported per round).
# JSON lines in runs/bench/compare-<date>.jsonl.
FLOWER_VENV  ?= .venv-flower
COMPARE_ARGS ?=
$(FLOWER_VENV)/.installed: pyproject.toml benchmarks/install_flower.sh
	python3 -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOWER_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(FLOWER_VENV)/bin/python -m pip install -q -e ".[edge,sim]"
	benchmarks/install_flower.sh $(FLOWER_VENV) sim
	touch $@

bench-compare: setup $(FLOWER_VENV)/.installed
	$(PY) benchmarks/compare.py --hierfl $(HIERFL) --flower-python $(FLOWER_VENV)/bin/python \
	  $(COMPARE_ARGS)

# The compose stack in real containers (compose/test.sh, docs/deployment.md): builds the images
# (offline wheelhouse), provisions, runs Tansu-as-Kafka, mosquitto (mutual TLS), cloud, 2 fogs,
# 4 edges and Prometheus, kills a fog, restarts the stack, tears it down. Needs root (starts
# dockerd if none runs, and stops only that one) and several minutes; not part of `make test`.
compose-test: setup
	compose/test.sh

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
