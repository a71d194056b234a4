#!/usr/bin/env bash
# `make bench`: short runs of every load scenario (a few minutes) against optimised builds of
# the local stack and, side by side, the baseline relay (bench/relay, Node.js `ws`); the
# results go to .run/bench/*.json and docs/BENCHMARKS.md. `make bench BENCH=--long` runs the
# full sizes (100,000 connections, 20,000-client storm, longer steps).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODE=short
[ "${1:-}" = --long ] && MODE=long
OUT="$RUN/bench"
RELAY_PORT=${TERTULIA_RELAY_PORT:-8099}
rm -rf "$OUT"
mkdir -p "$OUT"

# Connections need file descriptors on both ends (the stack inherits this limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "Open files per process: $(ulimit -n)"

"$ROOT/scripts/tools.sh" --bench
log "Building optimised binaries (the services and the load generator)"
(cd "$ROOT" && cargo build -j2 --release -q --bins)
# The generator signs in thousands of users from a few addresses in seconds: the stack's login
# limits are raised for the run (they are a defence against guessing, not what is measured).
export TERTULIA_AUTH_LOGIN_LIMITS__PER_USERNAME=1000000
export TERTULIA_AUTH_LOGIN_LIMITS__PER_ADDRESS=1000000
export TERTULIA_AUTH_LOGIN_LIMITS__WINDOW_S=60
# Each connection of the capacity run is a user of its own, as in production, so the users are
# made in seconds: the password hash is made cheap for the run (it is not what is measured).
export TERTULIA_AUTH_ARGON2__MEMORY_KIB=64
export TERTULIA_AUTH_ARGON2__ITERATIONS=1
export TERTULIA_AUTH_ARGON2__PARALLELISM=1
export TERTULIA_PROFILE=release
export RUST_LOG=warn
# A database of its own, made afresh: runs compare only when they start from the same state
# (the local stack's database grows with every run; outbox rows stay an hour).
BENCH_DB=tertulia_bench
psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)"
psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE $BENCH_DB"
export TERTULIA_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$BENCH_DB"

if [ "$MODE" = long ]; then
  CONNECTIONS=100000; STEP=20; RATES=1000,2000,5000,8000,12000
  STORM=20000; SIZES_RATE=2000; MEMBERS=1000; VIDEOS=1000000; MEDIA_STEP=20; DEPTHS=1,10,100,500
else
  CONNECTIONS=10000; STEP=5; RATES=500,1000,2000,3500,5000
  STORM=2000; SIZES_RATE=1000; MEMBERS=300; VIDEOS=200000; MEDIA_STEP=5; DEPTHS=1,10,50,100
fi
# One process holds at most `ulimit -n` sockets (the gateway and the generator alike). A
# capacity target past that is served by several gateway processes sharing the port
# (TERTULIA_GATEWAY_PROCESSES; the kernel's spread over them is uneven by a few hundred) and
# held by as many generator processes; the relay, one process, runs as many as fit.
FITS=$(( $(ulimit -n) - 1000 ))
PER_PROCESS=$((FITS - 2000))
CAPACITY_PROCESSES=$(( (CONNECTIONS + PER_PROCESS - 1) / PER_PROCESS ))
RELAY_CONNECTIONS=$CONNECTIONS
[ "$RELAY_CONNECTIONS" -gt "$FITS" ] && RELAY_CONNECTIONS=$FITS
# One user per connection: a user's first connection on a gateway also costs its delivery
# subscription, which a run of few users with many devices each would hide.
CONN_USERS=$CONNECTIONS
TERTULIA_GATEWAY_PROCESSES=$CAPACITY_PROCESSES "$ROOT/scripts/stack.sh" start

if [ ! -d "$ROOT/bench/relay/node_modules" ]; then
  (cd "$ROOT/bench/relay" && npm ci --no-audit --no-fund --loglevel=error)
fi
PORT=$RELAY_PORT node "$ROOT/bench/relay/relay.mjs" >"$RUN/logs/relay.log" 2>&1 &
RELAY_PID=$!
cleanup() {
  kill "$RELAY_PID" 2>/dev/null || true
  "$ROOT/scripts/stack.sh" stop
}
trap cleanup EXIT
wait_for "grep -q 'baseline relay' $RUN/logs/relay.log" 10 || die "the relay did not start"
LOAD="$ROOT/target/release/tertulia-load"
RELAY=(--url "http://127.0.0.1:$RELAY_PORT" --target relay --gateway-pid "$RELAY_PID")
# The gateway's address and its processes (several when they share its port).
tertulia() {
  local f pids=()
  for f in "$RUN/pids/bff.pid" "$RUN"/pids/bff.*.pid; do
    if [ -f "$f" ]; then pids+=("$(cat "$f")"); fi
  done
  TERTULIA=(--url "http://127.0.0.1:$BFF_PORT" --gateway-pid "$(IFS=,; echo "${pids[*]}")")
}
tertulia
# Where the CPU goes during each throughput step, by process name.
WATCH=(--watch svc-bff,svc-chat,svc-presence,postgres,nats-server,node,tertulia-load)

# A storm larger than one process can hold is spread over two gateways (a second svc-bff and
# svc-chat, TERTULIA_INSTANCES=2) and two generator processes, as production spreads clients
# over gateways behind a load balancer.
STORM_PROCESSES=1
if [ "$STORM" -gt "$((FITS - 2000))" ]; then
  STORM_PROCESSES=2
  [ "$STORM" -gt "$((2 * (FITS - 2000)))" ] && STORM=$((2 * (FITS - 2000)))
fi
# Throughput runs use MEMBERS users, one connection each (the gateway allows a connection 20
# frames a second, so a rate needs at least rate/20 senders).

# Every command is recorded with its result, for docs/BENCHMARKS.md.
run() {
  local name=$1
  shift
  log "$name: tertulia-load $*"
  printf '%s\n' "tertulia-load $*" > "$OUT/$name.cmd"
  "$LOAD" "$@" --json "$OUT/$name.json" 2> >(tee "$OUT/$name.log" >&2) ||
    log "$name reported a failure (see $OUT/$name.log)"
}

run capacity-tertulia capacity "${TERTULIA[@]}" --connections "$CONNECTIONS" --users "$CONN_USERS" \
  --processes "$CAPACITY_PROCESSES" --hold 3
if [ "$CAPACITY_PROCESSES" -gt 1 ]; then
  log "Back to one gateway process for the other runs"
  "$ROOT/scripts/stack.sh" start
  tertulia
fi
run capacity-relay capacity "${RELAY[@]}" --connections "$RELAY_CONNECTIONS" --users "$RELAY_CONNECTIONS" --hold 3
for size in 2 10 100; do
  groups=$((MEMBERS / size))
  rates=$SIZES_RATE
  [ "$size" = 10 ] && rates=$RATES
  run "throughput-$size-tertulia" throughput "${TERTULIA[@]}" --size "$size" --groups "$groups" \
    --rates "$rates" --duration "$STEP" "${WATCH[@]}"
  run "throughput-$size-relay" throughput "${RELAY[@]}" --size "$size" --groups "$groups" \
    --rates "$rates" --duration "$STEP" "${WATCH[@]}"
done
STORM_URL="http://127.0.0.1:$BFF_PORT"
if [ "$STORM_PROCESSES" = 2 ]; then
  log "The storm needs two gateways: restarting the stack with two instances"
  TERTULIA_INSTANCES=2 "$ROOT/scripts/stack.sh" start
  STORM_URL="$STORM_URL,http://127.0.0.1:$((BFF_PORT + 1))"
fi
run storm-tertulia storm --url "$STORM_URL" --processes "$STORM_PROCESSES" --clients "$STORM" \
  --devices 10 --messages 5

# The media origin against nginx, a large tus upload against the disk; catalog search.
record() {
  local name=$1
  shift
  log "$name: $*"
  # Recorded relative to the checkout (the report is committed).
  local words="$*"
  printf '%s\n' "${words//$ROOT\//}" > "$OUT/$name.cmd"
  (cd "$ROOT" && python3 "$@") 2> >(tee "$OUT/$name.log" >&2) ||
    log "$name reported a failure (see $OUT/$name.log)"
}
record media scripts/bench_media.py "$OUT" "http://127.0.0.1:$BFF_PORT" "$RUN/media/blobs" \
  --duration "$MEDIA_STEP" --pairs 3 --upload-mib 1024
record catalog scripts/bench_catalog.py "$OUT" "http://127.0.0.1:$BFF_PORT" "$TERTULIA_DATABASE_URL" \
  --videos "$VIDEOS" --duration "$MEDIA_STEP" --depths "$DEPTHS"

echo "$(ulimit -n)" > "$OUT/open-files-limit"
python3 "$ROOT/scripts/bench_report.py" "$OUT" "$MODE" > "$ROOT/docs/BENCHMARKS.md"
log "Results: docs/BENCHMARKS.md (raw: .run/bench/)"
