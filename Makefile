# hierfl — one-command set-up on a fresh machine.
#   make demo    set up, then run a real federation (brokers started and stopped for you)
#   make test    set up, then run the whole test suite against real brokers
#   make simtest the deterministic fault simulator (SEEDS=1000 seeds; docs/simulation.md)
VENV   ?= .venv
PY     := $(VENV)/bin/python
HIERFL := $(VENV)/bin/hierfl
# torch first, pinned: a CPU wheel (any other spec may pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: setup system-deps demo test lint simtest bench bench-compare clean

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

# hierfl and Flower 1.42 on the same scenarios, one after the other on this machine (~45 min:
# Flower's deployment runtime takes ~1 min per round). JSON lines in runs/bench/.
bench-compare: setup
	benchmarks/install_flower.sh $(VENV)
	mkdir -p runs/bench
	$(PY) benchmarks/digits.py | tee runs/bench/hierfl.jsonl
	$(PY) benchmarks/flower_digits.py --timeout 3600 | tee runs/bench/flower.jsonl

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
