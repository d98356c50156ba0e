# hierfl images, one target per tier (build from the repository root):
#
#   docker build --target fog   -t hierfl-fog .     # no torch: fits an IoT gateway
#   docker build --target cloud -t hierfl-cloud .   # no torch
#   docker build --target edge  -t hierfl-edge .    # torch (CPU build) for training on a device
#
# Python dependencies come from the hash-pinned lock files compose/requirements/server.lock
# (fog, cloud) and compose/requirements/edge.lock (edge), installed with pip --require-hashes:
#
#   default             from the package index (PIP_INDEX_URL; torch from TORCH_INDEX_URL)
#   WHEELHOUSE=1        offline, from compose/wheelhouse/ (made by compose/wheelhouse.sh on a
#                       machine with the index; air-gapped plants copy it in): no network at all
#                       for pip. apt still needs a Debian mirror (or a base that has python3).
#
#   docker build --network host --build-arg WHEELHOUSE=1 \
#       --build-arg BASE_IMAGE=hierfl-base:bookworm --target fog -t hierfl-fog .
#
# Build arguments: BASE_IMAGE (a Debian bookworm image: python3 3.11 from Debian),
# WHEELHOUSE (0/1), TORCH_INDEX_URL (edge, default: the CPU index of download.pytorch.org).
# Only pyproject.toml, README.md, hierfl/ and compose/{requirements,wheelhouse}/ are in the
# build context (.dockerignore). Stages are ordered so that building fog or cloud with the
# classic builder never builds the edge's torch layers. docs/deployment.md explains the rest.

ARG BASE_IMAGE=debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818

# --- the OS layer every tier shares: Debian's python3 (3.11), an unprivileged user ---------------
FROM ${BASE_IMAGE} AS os
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/hierfl \
       --shell /usr/sbin/nologin hierfl \
    && mkdir -p /etc/hierfl /var/lib/hierfl/store /var/lib/hierfl/fog-spool \
       /var/lib/hierfl/fog-state /var/lib/hierfl/init \
    && chown -R hierfl:hierfl /var/lib/hierfl

# --- fog and cloud: the core dependencies (no torch) in /opt/hierfl -------------------------------
FROM os AS build-server
ARG WHEELHOUSE=0
COPY compose/requirements/server.lock /src/compose/requirements/server.lock
COPY compose/wheelhouse /wheelhouse
RUN python3 -m venv /opt/hierfl \
    && if [ "$WHEELHOUSE" = 1 ]; then set -- --no-index --find-links /wheelhouse; else set --; fi \
    && /opt/hierfl/bin/pip install --require-hashes --no-deps --only-binary=:all: "$@" \
       -r /src/compose/requirements/server.lock
COPY pyproject.toml README.md /src/
COPY hierfl /src/hierfl
# hierfl itself, built with the locked setuptools (no build isolation: nothing fetched).
RUN /opt/hierfl/bin/pip install --no-deps --no-build-isolation /src \
    && /opt/hierfl/bin/python -c "import hierfl.fog.service, hierfl.cloud.service, prometheus_client" \
    && ! /opt/hierfl/bin/python -c "import torch" 2>/dev/null

FROM os AS server
# socat: exposes the metrics endpoint (which binds 127.0.0.1) on the container's network for
# Prometheus, when METRICS_FORWARD_PORT is set (compose/hierfl-start.sh).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends socat \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build-server /opt/hierfl /opt/hierfl
COPY compose/hierfl-start.sh /usr/local/bin/hierfl-start
ENV PATH=/opt/hierfl/bin:$PATH
WORKDIR /var/lib/hierfl
USER hierfl
ENTRYPOINT ["/usr/local/bin/hierfl-start"]

FROM server AS cloud
# checkpoints (store_dir)
VOLUME ["/var/lib/hierfl/store"]
CMD ["hierfl", "cloud", "--config", "/etc/hierfl/cloud.toml"]

FROM server AS fog
# accepted updates spooled across restarts (spool_dir), replay counters (security.state_dir)
VOLUME ["/var/lib/hierfl/fog-spool", "/var/lib/hierfl/fog-state"]
CMD ["hierfl", "fog", "--config", "/etc/hierfl/fog.toml"]

# --- edge: the core dependencies and torch (CPU) ----------------------------------------------------
FROM os AS build-edge
ARG WHEELHOUSE=0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY compose/requirements/edge.lock /src/compose/requirements/edge.lock
COPY compose/wheelhouse /wheelhouse
# The CPU torch wheel (torch==2.13.0+cpu in the lock): the default PyPI wheel pulls in CUDA
# libraries (gigabytes) that a device without a GPU never uses.
RUN python3 -m venv /opt/hierfl \
    && if [ "$WHEELHOUSE" = 1 ]; then set -- --no-index --find-links /wheelhouse; \
       else set -- --extra-index-url "$TORCH_INDEX_URL"; fi \
    && /opt/hierfl/bin/pip install --require-hashes --no-deps --only-binary=:all: "$@" \
       -r /src/compose/requirements/edge.lock
COPY pyproject.toml README.md /src/
COPY hierfl /src/hierfl
RUN /opt/hierfl/bin/pip install --no-deps --no-build-isolation /src \
    && /opt/hierfl/bin/python -c "import hierfl.edge, torch; print('torch', torch.__version__)"

FROM os AS edge
COPY --from=build-edge /opt/hierfl /opt/hierfl
COPY compose/hierfl-start.sh /usr/local/bin/hierfl-start
ENV PATH=/opt/hierfl/bin:$PATH
WORKDIR /var/lib/hierfl
USER hierfl
ENTRYPOINT ["/usr/local/bin/hierfl-start"]
CMD ["hierfl", "edge", "--config", "/etc/hierfl/edge.toml"]
