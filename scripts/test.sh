#!/usr/bin/env bash
# The whole test suite: ensures PostgreSQL and Redis, and the browser the
# playground test drives (Chromium, playwright-core), clears databases left
# by earlier runs, then runs every test of the workspace. Extra arguments go
# to `cargo test` (e.g. `scripts/test.sh -p pantheon-tests sessions`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/browser.sh

# Each end-to-end test creates its own pantheon_test_* database; drop the
# ones earlier runs left behind.
psql -q -h 127.0.0.1 -U postgres -d postgres -At \
  -c "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'pantheon_test_%'" \
  | psql -q -h 127.0.0.1 -U postgres -d postgres >/dev/null

cargo test --workspace "$@"
