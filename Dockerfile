# syntax=docker/dockerfile:1
# hierfl images, one target per tier (build from the repository root):
#
#   docker build --target fog   -t hierfl-fog .     # numpy only, no torch: fits an IoT gateway
#   docker build --target cloud -t hierfl-cloud .   # numpy only, no torch
#   docker build --target edge  -t hierfl-edge .    # torch (CPU build) for training on a device
#
#   docker run --rm -v $PWD/fog/fog.toml:/etc/hierfl/fog.toml:ro -e HIERFL_MQTT__PASSWORD=... hierfl-fog
#   docker run --rm -v $PWD/cloud/cloud.toml:/etc/hierfl/cloud.toml:ro \
#       -v hierfl-store:/var/lib/hierfl/store hierfl-cloud
#   docker run --rm -v $PWD/edge/edge.toml:/etc/hierfl/edge.toml:ro \
#       -e HIERFL_EDGE_ID=sensor-0017 -e HIERFL_MQTT__PASSWORD=... hierfl-edge
#
# Only pyproject.toml, README.md and hierfl/ are copied into the build. Edge build arguments:
# TORCH_VERSION, TORCH_INDEX_URL (e.g. a CUDA index for a GPU device), and EXTRAS (add "sim" for
# the built-in digits/sensors tasks, which need scikit-learn).

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hierfl ./hierfl
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Unprivileged user; /var/lib/hierfl holds a tier's only writable state.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/hierfl --shell /usr/sbin/nologin hierfl \
    && mkdir -p /etc/hierfl /var/lib/hierfl/store /var/lib/hierfl/fog-spool \
    && chown -R hierfl:hierfl /var/lib/hierfl
WORKDIR /var/lib/hierfl

# Fog and cloud: `pip install .` without extras, and a build-time proof that torch is absent.
FROM runtime AS server
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/hierfl-*.whl \
    && rm -rf /wheels \
    && python -c "import hierfl.fog.service, hierfl.cloud.service" \
    && ! python -c "import torch" 2>/dev/null
USER hierfl

FROM server AS cloud
# checkpoints (store_dir in cloud.toml)
VOLUME ["/var/lib/hierfl/store"]
CMD ["hierfl", "cloud", "--config", "/etc/hierfl/cloud.toml"]

FROM server AS fog
# accepted updates spooled across restarts (spool_dir in fog.toml)
VOLUME ["/var/lib/hierfl/fog-spool"]
CMD ["hierfl", "fog", "--config", "/etc/hierfl/fog.toml"]

FROM runtime AS edge
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=edge
# torch first, from the CPU index: the default PyPI wheel pulls in CUDA libraries (gigabytes)
# that a device without a GPU never uses. Its own layer, so code changes do not rebuild it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY --from=wheel /wheels /wheels
# `pip install .[edge]`: the installed CPU torch already satisfies the extra.
RUN whl=$(ls /wheels/hierfl-*.whl) \
    && pip install "${whl}[${EXTRAS}]" \
    && rm -rf /wheels \
    && python -c "import hierfl.edge, torch; print('torch', torch.__version__)"
USER hierfl
CMD ["hierfl", "edge", "--config", "/etc/hierfl/edge.toml"]
