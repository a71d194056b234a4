#!/usr/bin/env bash
# The local stack: `start` (background; waits until every service is healthy and writes
# .run/stack.env), `stop`, and `up` (start, follow the logs in the foreground, stop on Ctrl-C).
# Running `start` again restarts the services; stale pid files after a crash are harmless.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# TERTULIA_INSTANCES=2 runs a second svc-chat and a second svc-bff over the same PostgreSQL
# and NATS: the gateways balance calls over both chat instances.
INSTANCES=${TERTULIA_INSTANCES:-1}
SERVICES=(auth chat presence catalog media bff)
if [ "$INSTANCES" = 2 ]; then
  SERVICES+=(chat-2 bff-2)
fi
# TERTULIA_GATEWAY_PROCESSES=N serves the gateway's port with N svc-bff processes (bff, bff.2,
# ...) that share it (http.share_port): one process holds at most `ulimit -n` connections.
GATEWAY_PROCESSES=${TERTULIA_GATEWAY_PROCESSES:-1}
[[ "$GATEWAY_PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "TERTULIA_GATEWAY_PROCESSES is a number of processes, 1 or more"
for ((p = 2; p <= GATEWAY_PROCESSES; p++)); do SERVICES+=("bff.$p"); done
CHAT_URLS="http://127.0.0.1:$CHAT_PORT"
[ "$INSTANCES" = 2 ] && CHAT_URLS="$CHAT_URLS,http://127.0.0.1:$((CHAT_PORT + 10))"
# TERTULIA_MESH=1 puts every service behind its own Envoy sidecar (scripts/mesh.py local):
# calls between services go sidecar to sidecar over mutual TLS, the gateway (8080) and the
# media origin (8090) are served by their sidecars' edge listeners. See docs/mesh.md.
MESH=${TERTULIA_MESH:-0}
if [ "$MESH" = 1 ] && { [ "$INSTANCES" != 1 ] || [ "$GATEWAY_PROCESSES" != 1 ]; }; then
  die "TERTULIA_MESH=1 runs one instance of each service"
fi
MESH_DIR="$RUN/mesh"
SIDECARS=(auth chat presence catalog media bff)
PIDS="$RUN/pids"
LOGS="$RUN/logs"
# TERTULIA_PROFILE=release runs optimised builds (the benchmarks do); debug by default.
PROFILE=${TERTULIA_PROFILE:-debug}
case "$PROFILE" in
  debug) CARGO_PROFILE=() ;;
  release) CARGO_PROFILE=(--release) ;;
  *) die "TERTULIA_PROFILE is debug or release" ;;
esac
BIN="$ROOT/target/$PROFILE"

grpc_port() {
  case $1 in
    auth) echo "$AUTH_PORT" ;; chat) echo "$CHAT_PORT" ;; presence) echo "$PRESENCE_PORT" ;;
    catalog) echo "$CATALOG_PORT" ;; media) echo "$MEDIA_PORT" ;; chat-2) echo $((CHAT_PORT + 10)) ;;
  esac
}

http_port() {
  case $1 in bff | bff.*) echo "$BFF_PORT" ;; bff-2) echo $((BFF_PORT + 1)) ;; esac
}

# The service of an instance: chat-2 and bff.3 are instances of chat and bff.
service_of() {
  local svc=${1%%.*}
  echo "${svc%-2}"
}

binary() { echo "svc-$(service_of "$1")"; }

# The environment of one service: its own listener, and what it talks to.
service_env() {
  local instance=$1 svc up
  svc=$(service_of "$instance")
  up=$(echo "$svc" | tr a-z A-Z)
  echo "TERTULIA_DATABASE__URL=$DATABASE_URL"
  echo "TERTULIA_NATS__URL=$NATS_URL"
  case $svc in
    bff)
      echo "TERTULIA_BFF_HTTP__LISTEN=127.0.0.1:$(http_port "$instance")"
      echo "TERTULIA_BFF_AUTH__URL=http://127.0.0.1:$AUTH_PORT"
      echo "TERTULIA_BFF_CHAT__URL=$CHAT_URLS"
      echo "TERTULIA_BFF_PRESENCE__URL=http://127.0.0.1:$PRESENCE_PORT"
      echo "TERTULIA_BFF_CATALOG__URL=http://127.0.0.1:$CATALOG_PORT"
      echo "TERTULIA_BFF_MEDIA__URL=http://127.0.0.1:$MEDIA_PORT"
      echo "TERTULIA_BFF_WEB__ROOT=$ROOT/web/dist"
      if [ "$GATEWAY_PROCESSES" -gt 1 ] && [ "${instance%%.*}" = bff ]; then
        echo "TERTULIA_BFF_HTTP__SHARE_PORT=true"
      fi
      ;;
    catalog)
      echo "TERTULIA_CATALOG_GRPC__LISTEN=127.0.0.1:$CATALOG_PORT"
      echo "TERTULIA_CATALOG_DATABASE__SCHEMA=catalog"
      echo "TERTULIA_CATALOG_MEDIA__URL=http://127.0.0.1:$MEDIA_PORT"
      echo "TERTULIA_CATALOG_GRPC__LIFECYCLE_FILE=$ROOT/proto/lifecycle.toml"
      ;;
    media)
      echo "TERTULIA_MEDIA_GRPC__LISTEN=127.0.0.1:$MEDIA_PORT"
      echo "TERTULIA_MEDIA_DATABASE__SCHEMA=media"
      echo "TERTULIA_MEDIA_HTTP_LISTEN=127.0.0.1:$MEDIA_HTTP_PORT"
      echo "TERTULIA_MEDIA_PUBLIC_URL=http://127.0.0.1:$MEDIA_HTTP_PORT"
      echo "TERTULIA_MEDIA_BLOBS__KIND=fs"
      echo "TERTULIA_MEDIA_BLOBS__ROOT=$RUN/media/blobs"
      echo "TERTULIA_MEDIA_WORK_DIR=$RUN/media/work"
      echo "TERTULIA_MEDIA_SIGNING__CURRENT=local"
      echo "TERTULIA_MEDIA_SIGNING__KEYS__local=$(signing_key)"
      ;;
    presence)
      echo "TERTULIA_PRESENCE_GRPC__LISTEN=127.0.0.1:$PRESENCE_PORT"
      echo "TERTULIA_PRESENCE_AUTH__URL=http://127.0.0.1:$AUTH_PORT"
      echo "TERTULIA_PRESENCE_CHAT__URL=$CHAT_URLS"
      ;;
    *)
      echo "TERTULIA_${up}_GRPC__LISTEN=127.0.0.1:$(grpc_port "$instance")"
      echo "TERTULIA_${up}_DATABASE__SCHEMA=$svc"
      # Dates of deprecated gRPC methods (only chat has some among these).
      if [ "$svc" = chat ]; then
        echo "TERTULIA_CHAT_GRPC__LIFECYCLE_FILE=$ROOT/proto/lifecycle.toml"
      fi
      ;;
  esac
}

# A service's overrides in mesh mode (its listeners behind the sidecar, its upstream URLs).
mesh_env() {
  if [ "$MESH" = 1 ]; then cat "$MESH_DIR/${1%-2}.env"; fi
}

start_sidecars() {
  python3 "$ROOT/scripts/mesh.py" local "$MESH_DIR"
  local i=0 svc
  for svc in "${SIDECARS[@]}"; do
    log "Starting the Envoy sidecar of svc-$svc"
    "$VENV/bin/envoy" --disable-hot-restart --concurrency 1 -l warn --file-flush-interval-msec 1000 \
      -c "$MESH_DIR/$svc.json" >>"$LOGS/envoy-$svc.log" 2>&1 &
    echo $! > "$PIDS/envoy-$svc.pid"
  done
  for svc in "${SIDECARS[@]}"; do
    i=$((i + 1))
    if ! wait_for "curl -fsS http://127.0.0.1:$((15900 + i))/ready" 30; then
      tail -20 "$LOGS/envoy-$svc.log" >&2 || true
      stop_services
      die "the sidecar of svc-$svc did not start (log: .run/logs/envoy-$svc.log)"
    fi
  done
}

# The local stack's media signing key: random, made once, kept in .run.
signing_key() {
  local file="$RUN/media-signing-key"
  if [ ! -s "$file" ]; then
    mkdir -p "$RUN"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$file"
  fi
  cat "$file"
}

healthy() {
  local svc=$1 port
  if [ "$(service_of "$svc")" = bff ]; then
    port=$(http_port "$svc")
    # Any process of a shared port answers on it: this one must be among its listeners.
    if [ "$GATEWAY_PROCESSES" -gt 1 ]; then
      ss -Hltnp "sport = :$port" | grep -q "pid=$(cat "$PIDS/$svc.pid")," || return 1
    fi
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1
  else
    "$BIN/tertulia-health" "http://127.0.0.1:$(grpc_port "$svc")" >/dev/null 2>&1
  fi
}

stop_services() {
  local svc
  # Every instance that may have been started, whatever TERTULIA_INSTANCES is now.
  for svc in auth chat presence catalog media bff chat-2 bff-2; do
    stop_pidfile "$PIDS/$svc.pid"
    stop_pidfile "$PIDS/envoy-$svc.pid"
  done
  for pidfile in "$PIDS"/bff.*.pid; do
    stop_pidfile "$pidfile"
  done
}

start() {
  "$ROOT/scripts/tools.sh"
  "$ROOT/scripts/nats.sh" start
  "$ROOT/scripts/web.sh" build
  log "Building the services"
  (cd "$ROOT" && cargo build -j2 --bins -q "${CARGO_PROFILE[@]}")
  stop_services
  mkdir -p "$PIDS" "$LOGS"
  if [ "$MESH" = 1 ]; then start_sidecars; fi
  for svc in "${SERVICES[@]}"; do
    log "Starting svc-$svc"
    # shellcheck disable=SC2046
    env $(service_env "$svc") $(mesh_env "$svc") RUST_LOG="${RUST_LOG:-info}" \
      "$BIN/$(binary "$svc")" >>"$LOGS/svc-$svc.log" 2>&1 &
    echo $! > "$PIDS/$svc.pid"
  done
  for svc in "${SERVICES[@]}"; do
    if ! wait_for "healthy $svc" 60; then
      tail -20 "$LOGS/svc-$svc.log" >&2 || true
      stop_services
      die "svc-$svc did not become healthy (log: .run/logs/svc-$svc.log)"
    fi
  done
  cat > "$RUN/stack.env" <<ENV
# Addresses of the running local stack, written by scripts/stack.sh.
TERTULIA_BFF_URL=http://127.0.0.1:$BFF_PORT
TERTULIA_WEB_URL=http://127.0.0.1:$BFF_PORT/
TERTULIA_AUTH_GRPC=http://127.0.0.1:$AUTH_PORT
TERTULIA_CHAT_GRPC=http://127.0.0.1:$CHAT_PORT
TERTULIA_PRESENCE_GRPC=http://127.0.0.1:$PRESENCE_PORT
TERTULIA_CATALOG_GRPC=http://127.0.0.1:$CATALOG_PORT
TERTULIA_MEDIA_GRPC=http://127.0.0.1:$MEDIA_PORT
TERTULIA_MEDIA_URL=http://127.0.0.1:$MEDIA_HTTP_PORT
TERTULIA_BFF_URLS=$( [ "$INSTANCES" = 2 ] && echo "http://127.0.0.1:$BFF_PORT,http://127.0.0.1:$((BFF_PORT + 1))" || echo "http://127.0.0.1:$BFF_PORT")
TERTULIA_CHAT_GRPC_URLS=$CHAT_URLS
TERTULIA_NATS_URL=$NATS_URL
TERTULIA_DATABASE_URL=$DATABASE_URL
TERTULIA_MESH=$MESH
ENV
  log "Tertulia is up. Web client: http://127.0.0.1:$BFF_PORT/"
  log "API: http://127.0.0.1:$BFF_PORT/api/v2  (addresses in .run/stack.env)"
  if [ "$MESH" = 1 ]; then
    log "Every service runs behind its Envoy sidecar; access logs in .run/mesh/*.access.log"
  fi
}

stop() {
  stop_services
  "$ROOT/scripts/nats.sh" stop
  rm -f "$RUN/stack.env"
  log "Tertulia stopped."
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  up)
    start
    log "Following the logs; Ctrl-C stops everything."
    tail -n 0 -F "$LOGS"/svc-*.log &
    tail_pid=$!
    trap 'kill "$tail_pid" 2>/dev/null; stop; exit 0' INT TERM
    wait "$tail_pid"
    ;;
  *) die "usage: $0 start|stop|up" ;;
esac
