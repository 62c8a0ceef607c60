#!/usr/bin/env bash
# The compose stack end to end, as an operator runs it on plain Docker:
#   deploy/e2e.sh
# builds the api and worker-cpu images, starts the cpu profile, registers the model, adds a
# client, submits a sample slide over HTTPS through the proxy, polls it to the end and fetches
# every result format; then scales to two workers (both score), SIGKILLs the worker holding a
# job (it finishes once), restarts redis and postgres (the stack recovers), brings the stack down
# and up again on its volumes (migrate on an existing database; the jobs are still there), and
# removes everything with `down -v`. Exits non-zero at the first thing that does not hold.
#
# Needs on the host: Docker with compose v2, curl, jq, openssl. Another engine: set COMPOSE (default `docker compose`), BUILD (default `docker build`) and
# DOCKER (default `docker`); tests/deploy/test_e2e.py does so for the engine script of the
# machine it runs on. Its own project name and port (COMPOSE_PROJECT_NAME, IDCSCAN_API_PORT)
# keep it off a stack already running on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE=${COMPOSE:-docker compose}
BUILD=${BUILD:-docker build}
DOCKER=${DOCKER:-docker}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-idcscan-e2e}
export IDCSCAN_API_PORT=${IDCSCAN_API_PORT:-18443}
# Short leases and reconciler rounds: a killed worker's job is taken over in seconds, not minutes.
export IDCSCAN_LEASE_S=10 IDCSCAN_RECONCILE_INTERVAL_S=5
SLIDE=samples/wsi/CMU-1-Small-Region.svs
WORK=$(mktemp -d)
started=$SECONDS

say() { printf '[e2e %3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
  say "FAILED: $*"
  tail -n 20 "$WORK/compose.log" || true
  $COMPOSE --profile cpu ps -a || true
  $COMPOSE --profile cpu logs --tail 40 || true
  say "FAILED: $*"  # again, last: the logs above are long
  exit 1
}
# No GPU worker here (`--scale worker=0`); --no-recreate: some engines would recreate running
# containers on every `up` (plain Docker does not need it, and it does no harm there).
up() {
  $COMPOSE --profile cpu up -d --no-build --pull never --no-recreate --scale worker=0 "$@" \
    >>"$WORK/compose.log" 2>&1 || fail "up $*"
}
cleanup() { $COMPOSE --profile cpu down -v --timeout 10 >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Every service running and healthy (`docker compose ps`; migrate has exited, so it is not listed).
wait_healthy() {
  local deadline=$((SECONDS + ${1:-240})) states
  while :; do
    states=$($COMPOSE --profile cpu ps --format '{{.Service}}:{{.State}}:{{.Health}}')
    if [ -n "$states" ] && ! grep -v -E ':running:healthy$' <<<"$states" >/dev/null; then
      say "healthy: $(tr '\n' ' ' <<<"$states")"
      return 0
    fi
    [ $SECONDS -lt $deadline ] || fail "not healthy in time: $(tr '\n' ' ' <<<"$states")"
    sleep 3
  done
}

# As a hospital's client should: a 503 (database or broker unavailable, as for a moment after
# a restart) is retried after its Retry-After, for up to two minutes; a submit can be retried
# safely because it carries an Idempotency-Key.
api() {
  curl -sS --fail-with-body --retry 8 --retry-max-time 120 --cacert "$WORK/tls/tls.crt" \
    -H "Authorization: Bearer $KEY" "$@"
}
URL=https://localhost:$IDCSCAN_API_PORT

# An operator's command in the api container. Right after `up` an engine's DNS may not answer for
# a moment (seen under podman: "failed to resolve host 'postgres'"): the command then exits 75
# (the database or broker out of reach, try again), and it is run again, up to 5 times.
admin() {
  local attempt out status
  for attempt in 1 2 3 4 5; do
    status=0
    out=$($COMPOSE exec -T api idcscan "$@" 2>&1) || status=$?
    if [ "$status" = 0 ]; then
      printf '%s\n' "$out"
      return 0
    fi
    printf '%s\n' "$out" | tail -n 5 >&2
    [ "$status" = 75 ] || return 1
    say "idcscan $*: attempt $attempt could not reach the database or broker" >&2
    sleep 3
  done
  return 1
}

submit() {  # submit KEY -> job id, over HTTPS through the proxy
  api -H "Idempotency-Key: $1" -F "slide=@$SLIDE" "$URL/v1/jobs" | jq -r .id
}

wait_job() {  # wait_job ID [seconds] -> until succeeded; fails on failed/cancelled
  local deadline=$((SECONDS + ${2:-180})) status
  while :; do
    status=$(api "$URL/v1/jobs/$1" | jq -r .status) || status=unreachable
    case $status in
      succeeded) return 0 ;;
      failed | cancelled) fail "job $1 ended $status: $(api "$URL/v1/jobs/$1")" ;;
    esac
    [ $SECONDS -lt $deadline ] || fail "job $1 still $status"
    sleep 1
  done
}

# --- images and secrets -------------------------------------------------------------------------
say "building the api and worker-cpu images"
$BUILD --target api -t idcscan-api:latest . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "build api"; }
$BUILD --target worker-cpu -t idcscan-worker-cpu:latest . >>"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "build worker-cpu"; }
mkdir -p "$WORK/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$WORK/tls/tls.key" -out "$WORK/tls/tls.crt" 2>/dev/null
chmod 0644 "$WORK/tls/tls.key"  # read by nginx's master, as root, through a read-only mount
export IDCSCAN_TLS_DIR=$WORK/tls POSTGRES_PASSWORD=$(openssl rand -hex 16) IDCSCAN_SECRET_KEY=$(openssl rand -base64 48)

# --- up, model, client, one slide through the proxy ---------------------------------------------
say "up with the cpu profile"
up
wait_healthy
admin models register --activate >/dev/null || fail "idcscan models register"
KEY=$(admin clients add e2e | tail -n 1 | tr -d '\r') || fail "idcscan clients add"
FIRST=$(submit first)
say "submitted $FIRST"
wait_job "$FIRST"
api -o "$WORK/result.json" "$URL/v1/jobs/$FIRST/result"
api -o "$WORK/tiles.json" "$URL/v1/jobs/$FIRST/tiles"
api -o "$WORK/tiles.csv" -H "Accept: text/csv" "$URL/v1/jobs/$FIRST/tiles"
api -o "$WORK/heatmap.png" "$URL/v1/jobs/$FIRST/heatmap.png"
api -o "$WORK/annotations.geojson" "$URL/v1/jobs/$FIRST/annotations.geojson"
jq -e '.tissue_tiles > 0' "$WORK/result.json" >/dev/null || fail "result"
jq -e 'length > 0' "$WORK/tiles.json" >/dev/null || fail "tiles as JSON"
[ "$(wc -l <"$WORK/tiles.csv")" -gt 1 ] || fail "tiles as CSV"
[ "$(head -c 4 "$WORK/heatmap.png" | tail -c 3)" = PNG ] || fail "heatmap"
jq -e '.type == "FeatureCollection"' "$WORK/annotations.geojson" >/dev/null || fail "GeoJSON"
say "job $FIRST succeeded; result, tiles (JSON, CSV), heatmap and GeoJSON fetched"

# --- two workers ----------------------------------------------------------------------------------
say "scaling to two workers"
up --scale worker-cpu=2
wait_healthy
# A replica just started may take a moment before its first message, and the sample slide is
# scored in well under a second: jobs go in rounds of six until each replica has scored one.
# (Logs are read whole before grep: `grep -q` closing the pipe early fails it under pipefail.)
SPREAD=()
for round in 1 2 3 4 5; do
  batch=()
  for n in 1 2 3 4 5 6; do batch+=("$(submit "spread-$round-$n")"); done
  for job in "${batch[@]}"; do wait_job "$job"; done
  SPREAD+=("${batch[@]}")
  spread=$(IFS='|'; echo "${SPREAD[*]}")
  scored=0
  for replica in 1 2; do
    logs=$($DOCKER logs "$COMPOSE_PROJECT_NAME-worker-cpu-$replica" 2>&1)
    if grep -q -E "job ($spread): succeeded" <<<"$logs"; then scored=$((scored + 1)); fi
  done
  [ "$scored" = 2 ] && break
done
[ "$scored" = 2 ] || fail "after ${#SPREAD[@]} jobs, $scored of the 2 workers had scored one"
say "both workers scored (${#SPREAD[@]} jobs)"

# --- a worker SIGKILLed mid-job ----------------------------------------------------------------------
KILLED=$(submit killed)
holder=
for _ in $(seq 300); do
  holder=$($COMPOSE --profile cpu logs worker-cpu 2>/dev/null \
    | grep "job $KILLED: claimed" | head -n 1 | cut -d ' ' -f 1 || true)
  [ -n "$holder" ] && break
  sleep 0.1
done
[ -n "$holder" ] || fail "no worker claimed $KILLED"
$DOCKER kill -s KILL "$COMPOSE_PROJECT_NAME-$holder" >/dev/null
say "SIGKILLed $holder holding $KILLED"
wait_job "$KILLED" 180
finished=$($COMPOSE --profile cpu logs worker-cpu 2>/dev/null | grep -c "job $KILLED: succeeded" || true)
[ "$finished" = 1 ] || fail "job $KILLED succeeded $finished times"
attempts=$(api "$URL/v1/jobs/$KILLED" | jq .attempts)
[ "$attempts" -ge 2 ] || fail "job $KILLED ran $attempts time(s): it was not killed mid-job"
say "job $KILLED finished once, on attempt $attempts"
up --scale worker-cpu=2  # the killed container back (a restart policy does not undo a kill)
wait_healthy

# --- redis and postgres restarted ----------------------------------------------------------------
say "restarting redis and postgres"
$COMPOSE restart redis postgres >>"$WORK/compose.log" 2>&1
wait_healthy
AFTER=$(submit after-restart)
wait_job "$AFTER"
say "job $AFTER succeeded after the restart"

# --- down and up on the same volumes: migrate on an existing database --------------------------
say "down (volumes kept) and up again"
$COMPOSE --profile cpu down --timeout 30 >>"$WORK/compose.log" 2>&1
up
wait_healthy
migrate_logs=$($COMPOSE --profile cpu logs migrate)
grep -q "database at head" <<<"$migrate_logs" || fail "migrate did not run"
for job in "$FIRST" "$KILLED" "$AFTER"; do
  status=$(api "$URL/v1/jobs/$job" | jq -r .status) || status="unreachable (see the api's log)"
  [ "$status" = succeeded ] || fail "job $job: $status after the restart"
done
AGAIN=$(submit after-upgrade)
wait_job "$AGAIN"
say "earlier jobs still there; a new one succeeded"

$COMPOSE --profile cpu down -v --timeout 30 >>"$WORK/compose.log" 2>&1
say "down -v: passed in $((SECONDS - started)) s"
