#!/usr/bin/env bash
# Starts or stops the project's own NATS server with JetStream (pinned version, own port and
# data directory under .run/nats). `start` reuses one that is already running.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PIDFILE="$RUN/nats.pid"

healthy() { curl -fsS "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" >/dev/null 2>&1; }

case "${1:-}" in
  start)
    # A healthy server on our port is reused, ours or not (streams are namespaced).
    if healthy; then
      exit 0
    fi
    stop_pidfile "$PIDFILE"
    mkdir -p "$RUN/nats"
    log "Starting nats-server $NATS_SERVER_VERSION on 127.0.0.1:$NATS_PORT (JetStream in .run/nats)"
    "$VENV/bin/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
      -js -sd "$RUN/nats" -l "$RUN/nats.log" >/dev/null 2>&1 &
    echo $! > "$PIDFILE"
    wait_for healthy 30 || { tail -20 "$RUN/nats.log" >&2; die "NATS did not become healthy"; }
    ;;
  stop)
    stop_pidfile "$PIDFILE"
    ;;
  running)
    healthy
    ;;
  *)
    die "usage: $0 start|stop|running"
    ;;
esac
