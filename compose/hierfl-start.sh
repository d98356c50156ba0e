#!/bin/sh
# Entrypoint of the hierfl images: runs its arguments (the tier's command) as PID 1.
#
# When METRICS_FORWARD_PORT and HIERFL_METRICS_PORT are both set and socat is installed (fog
# and cloud images), first forwards 0.0.0.0:$METRICS_FORWARD_PORT to the metrics endpoint bound
# to 127.0.0.1:$HIERFL_METRICS_PORT inside the container. The compose stack no longer needs it:
# its services bind 0.0.0.0 themselves (HIERFL_MONITORING__BIND, hierfl/health.py).
set -eu
if [ -n "${METRICS_FORWARD_PORT:-}" ] && [ -n "${HIERFL_METRICS_PORT:-}" ] \
    && command -v socat >/dev/null 2>&1; then
    socat "TCP-LISTEN:${METRICS_FORWARD_PORT},fork,reuseaddr" \
        "TCP:127.0.0.1:${HIERFL_METRICS_PORT}" &
fi
exec "$@"
