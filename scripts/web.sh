#!/usr/bin/env bash
# The web client (web/): `build` installs its npm packages (npm ci, from the committed
# package-lock.json) when they are missing or the lock changed, and builds web/dist when it is
# missing or older than a source; `check` type-checks it. svc-bff serves web/dist at `/`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WEB="$ROOT/web"

packages() {
  command -v npm >/dev/null || die "npm is missing: run scripts/tools.sh"
  local stamp="$WEB/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$WEB/package-lock.json" -nt "$stamp" ]; then
    log "Installing the web client's npm packages"
    (cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

stale() {
  [ ! -f "$WEB/dist/index.html" ] && return 0
  [ -n "$(find "$WEB/src" "$WEB/index.html" "$WEB/vite.config.js" "$WEB/package-lock.json" \
    "$WEB/tsconfig.json" -newer "$WEB/dist/index.html" -print -quit)" ]
}

case "${1:-}" in
  build)
    packages
    if stale; then
      log "Building the web client"
      (cd "$WEB" && npm run --silent build -- --logLevel warn)
    fi
    ;;
  check)
    packages
    (cd "$WEB" && npx tsc --noEmit)
    ;;
  *) die "usage: $0 build|check" ;;
esac
