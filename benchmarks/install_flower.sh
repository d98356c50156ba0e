#!/usr/bin/env bash
# Install Flower 1.42 into hierfl's venv for benchmarks/flower_digits.py, without letting pip
# downgrade what hierfl uses (typer, rich, packaging): flwr's own dependencies are installed
# with everything already present pinned, then flwr itself without dependencies.
# With `sim`, also Flower's simulation extra (flwr[simulation]==1.42.0, i.e. ray==2.55.1) for
# benchmarks/flower_sim.py, the same way: ray and the dependencies it lacks are installed with
# everything already present pinned (pip fails rather than change an installed package).
# cryptography is not asked for: hierfl depends on it, so it is always installed (and pinned);
# flwr 1.42 pins it <51, and with 51 `pip check` reports that pin unmet as it does typer's,
# rich's and packaging's (flwr's runtimes, simulation included, work with it).
# Usage: benchmarks/install_flower.sh [VENV] [sim]   (default .venv, no simulation extra)
set -euo pipefail
venv=${1:-.venv}
extra=${2:-}
if [ -n "$extra" ] && [ "$extra" != sim ]; then
  echo "usage: $0 [VENV] [sim]" >&2
  exit 2
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
pin_installed() {
  "$venv/bin/pip" freeze | grep -v -e '^-e ' -e ' @ ' -e '^hierfl' > "$constraints"
}
if ! "$venv/bin/python" -c 'import flwr, sys; sys.exit(flwr.__version__ != "1.42.0")' 2>/dev/null; then
  pin_installed
  "$venv/bin/pip" install -q -c "$constraints" "certifi>=2026.10.19" "grpcio>=1.70,<2" \
    "grpcio-health-checking>=1.70,<2" "protobuf>=5.28,<7" \
    "pycryptodome>=3.18,<4" "iterators>=0.0.2,<0.0.3" "uv>=0.13.5,<0.14" "tomli>=2.0.1,<3" \
    "tomli-w>=1,<2" "pathspec>=1.0.4,<2" "pyyaml>=6.0.2,<7" "prompt-toolkit>=3.0.52,<4" \
    "requests>=2.33,<3" "httpx>=0.28.1,<1" \
    "click>=8,<9" "sqlalchemy[asyncio]>=2.0.45,<3" "alembic>=1.18.1,<2" \
    "uvicorn[standard]>=0.49,<0.50" "fastapi>=0.138,<0.139" "starlette>=1.3.1,<1.4"
  "$venv/bin/pip" install -q --no-deps flwr==1.42.0
fi
if [ "$extra" = sim ] && ! "$venv/bin/python" -c \
    'import ray, sys; sys.exit(ray.__version__ != "2.55.1")' 2>/dev/null; then
  # flwr[simulation]==1.42.0 adds exactly ray==2.55.1 (Python 3.11-3.14, not Windows).
  pin_installed
  "$venv/bin/pip" install -q -c "$constraints" ray==2.55.1
fi
