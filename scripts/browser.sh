#!/usr/bin/env bash
# Ensures what the playground test drives: Debian's Chromium at
# /usr/bin/chromium (apt-get) and `playwright-core` from npm in
# tests/playground/node_modules (the version pinned by its package-lock.json).
# Installs each only when it is missing. Idempotent; scripts/test.sh runs it
# before every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'browser: %s\n' "$*" >&2; }

if [ ! -x /usr/bin/chromium ]; then
  log "installing Chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

if ! command -v npm >/dev/null; then
  log "installing Node.js and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi

if [ ! -f tests/playground/node_modules/playwright-core/package.json ]; then
  log "installing playwright-core"
  # No browser download: the test uses Debian's Chromium.
  (cd tests/playground && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi
