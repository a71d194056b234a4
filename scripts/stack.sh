#!/usr/bin/env bash
# The local stack: `start` (background; waits until every service is healthy and writes
# .run/stack.env), `stop`, and `up` (start, follow the logs in the foreground, stop on Ctrl-C).
# Running `start` again restarts the services; stale pid files after a crash are harmless.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SERVICES=(auth chat presence catalog media bff)
PIDS="$RUN/pids"
LOGS="$RUN/logs"
BIN="$ROOT/target/debug"

grpc_port() {
  case $1 in
    auth) echo "$AUTH_PORT" ;; chat) echo "$CHAT_PORT" ;; presence) echo "$PRESENCE_PORT" ;;
    catalog) echo "$CATALOG_PORT" ;; media) echo "$MEDIA_PORT" ;;
  esac
}

# The environment of one service: its own listener, and what it talks to.
service_env() {
  local svc=$1 up
  up=$(echo "$svc" | tr a-z A-Z)
  echo "TERTULIA_DATABASE__URL=$DATABASE_URL"
  echo "TERTULIA_NATS__URL=$NATS_URL"
  case $svc in
    bff)
      echo "TERTULIA_BFF_HTTP__LISTEN=127.0.0.1:$BFF_PORT"
      echo "TERTULIA_BFF_AUTH__URL=http://127.0.0.1:$AUTH_PORT"
      echo "TERTULIA_BFF_CHAT__URL=http://127.0.0.1:$CHAT_PORT"
      echo "TERTULIA_BFF_PRESENCE__URL=http://127.0.0.1:$PRESENCE_PORT"
      ;;
    presence)
      echo "TERTULIA_PRESENCE_GRPC__LISTEN=127.0.0.1:$PRESENCE_PORT"
      echo "TERTULIA_PRESENCE_AUTH__URL=http://127.0.0.1:$AUTH_PORT"
      echo "TERTULIA_PRESENCE_CHAT__URL=http://127.0.0.1:$CHAT_PORT"
      ;;
    *)
      echo "TERTULIA_${up}_GRPC__LISTEN=127.0.0.1:$(grpc_port "$svc")"
      echo "TERTULIA_${up}_DATABASE__SCHEMA=$svc"
      ;;
  esac
}

healthy() {
  local svc=$1
  if [ "$svc" = bff ]; then
    curl -fsS "http://127.0.0.1:$BFF_PORT/readyz" >/dev/null 2>&1
  else
    "$BIN/tertulia-health" "http://127.0.0.1:$(grpc_port "$svc")" >/dev/null 2>&1
  fi
}

stop_services() {
  for svc in "${SERVICES[@]}"; do
    stop_pidfile "$PIDS/$svc.pid"
  done
}

start() {
  "$ROOT/scripts/tools.sh"
  "$ROOT/scripts/nats.sh" start
  log "Building the services"
  (cd "$ROOT" && cargo build -j2 --bins -q)
  stop_services
  mkdir -p "$PIDS" "$LOGS"
  for svc in "${SERVICES[@]}"; do
    log "Starting svc-$svc"
    # shellcheck disable=SC2046
    env $(service_env "$svc") RUST_LOG="${RUST_LOG:-info}" \
      "$BIN/svc-$svc" >>"$LOGS/svc-$svc.log" 2>&1 &
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
TERTULIA_AUTH_GRPC=http://127.0.0.1:$AUTH_PORT
TERTULIA_CHAT_GRPC=http://127.0.0.1:$CHAT_PORT
TERTULIA_PRESENCE_GRPC=http://127.0.0.1:$PRESENCE_PORT
TERTULIA_CATALOG_GRPC=http://127.0.0.1:$CATALOG_PORT
TERTULIA_MEDIA_GRPC=http://127.0.0.1:$MEDIA_PORT
TERTULIA_NATS_URL=$NATS_URL
TERTULIA_DATABASE_URL=$DATABASE_URL
ENV
  log "Tertulia is up. API: http://127.0.0.1:$BFF_PORT/api/v1  (addresses in .run/stack.env)"
  log "The web client is not built yet; the API is the entry point."
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
