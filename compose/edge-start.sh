#!/bin/sh
# Start command of the scaled `edge` service. Every replica of a scaled compose service gets the
# same environment, so this gives each one its own identity, then runs
# `hierfl edge --config /etc/hierfl/edge.toml`:
#
#   HIERFL_EDGE_ID       unless set: "edge-" + the container's hostname (its unique short id)
#   HIERFL_FOG_ID        unless set: one of $EDGE_FOGS, picked by a hash of the edge id; stable
#                        across restarts, possibly uneven for a handful of replicas
#   HIERFL_TASK_OPTIONS  unless set, and only when EDGE_SHARDS is: {"index", "num_edges",
#                        "num_fogs"} for the built-in sensors task, with the data shard taken
#                        from the district (block of shards) of the chosen fog
set -eu

# Docker sets HOSTNAME to the container's short id.
: "${HIERFL_EDGE_ID:=edge-${HOSTNAME:-$(cat /etc/hostname)}}"
hash=$(printf '%s' "$HIERFL_EDGE_ID" | cksum | cut -d ' ' -f 1)

# Position of the fog in EDGE_FOGS (0-based), or -1 when HIERFL_FOG_ID names another fog.
fog_index=-1
n_fogs=0
for fog in ${EDGE_FOGS:-}; do
    n_fogs=$((n_fogs + 1))
done
if [ -z "${HIERFL_FOG_ID:-}" ]; then
    if [ "$n_fogs" -eq 0 ]; then
        echo "edge-start: set EDGE_FOGS (fog ids, space-separated) or HIERFL_FOG_ID" >&2
        exit 2
    fi
    fog_index=$((hash % n_fogs))
    i=0
    for fog in $EDGE_FOGS; do
        [ "$i" -eq "$fog_index" ] && HIERFL_FOG_ID=$fog
        i=$((i + 1))
    done
else
    i=0
    for fog in ${EDGE_FOGS:-}; do
        [ "$fog" = "$HIERFL_FOG_ID" ] && fog_index=$i
        i=$((i + 1))
    done
fi
export HIERFL_EDGE_ID HIERFL_FOG_ID

if [ -z "${HIERFL_TASK_OPTIONS:-}" ] && [ -n "${EDGE_SHARDS:-}" ] && [ "$fog_index" -ge 0 ]; then
    # hierfl.sim.scenarios.sensors_data gives shard i to district i // ceil(shards / fogs).
    per_fog=$(((EDGE_SHARDS + n_fogs - 1) / n_fogs))
    index=$((fog_index * per_fog + (hash / n_fogs) % per_fog))
    [ "$index" -lt "$EDGE_SHARDS" ] || index=$((EDGE_SHARDS - 1))
    HIERFL_TASK_OPTIONS=$(printf '{"index": %d, "num_edges": %d, "num_fogs": %d}' \
        "$index" "$EDGE_SHARDS" "$n_fogs")
    export HIERFL_TASK_OPTIONS
fi

echo "edge-start: edge $HIERFL_EDGE_ID joins fog $HIERFL_FOG_ID ${HIERFL_TASK_OPTIONS:-}"
exec hierfl edge --config "${HIERFL_EDGE_CONFIG:-/etc/hierfl/edge.toml}"
