#!/usr/bin/env bash
# The whole test suite: ensures PostgreSQL and Redis, starts a local Redis
# Cluster (scripts/cluster.sh) unless PANTHEON_TEST_CLUSTER_URLS names one
# that answers, and an S3 server (scripts/s3.sh) unless
# PANTHEON_TEST_S3_ENDPOINT names one that answers, ensures the browser the
# playground test drives (Chromium, playwright-core), clears databases left
# by earlier runs, then runs every test of the workspace, and stops the
# servers it started. Extra arguments go to `cargo test` (e.g.
# `scripts/test.sh -p pantheon-tests sessions`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/browser.sh

# What this run started, stopped at exit whichever way it ends.
CLUSTER_DIR=
S3_DIR=
cleanup() {
  if [ -n "$CLUSTER_DIR" ]; then scripts/cluster.sh stop "$CLUSTER_DIR" || true; fi
  if [ -n "$S3_DIR" ]; then scripts/s3.sh stop "$S3_DIR" || true; fi
}
trap cleanup EXIT

# The limiter's tests run on the single Redis and on a cluster. Tests that
# kill, stall or reshard a cluster start their own; this one is shared.
if [ -z "${PANTHEON_TEST_CLUSTER_URLS:-}" ] || ! scripts/cluster.sh check "$PANTHEON_TEST_CLUSTER_URLS"; then
  CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-test-cluster.XXXXXX")
  PANTHEON_TEST_CLUSTER_URLS=$(scripts/cluster.sh start "$CLUSTER_DIR")
  export PANTHEON_TEST_CLUSTER_URLS
  echo "test: Redis Cluster started at $PANTHEON_TEST_CLUSTER_URLS" >&2
fi

# The file store's tests run on a directory and on S3 (scripts/s3.sh: moto's
# server); each test makes a bucket of its own on this one.
if [ -z "${PANTHEON_TEST_S3_ENDPOINT:-}" ] || ! scripts/s3.sh check "$PANTHEON_TEST_S3_ENDPOINT"; then
  S3_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-test-s3.XXXXXX")
  PANTHEON_TEST_S3_ENDPOINT=$(scripts/s3.sh start "$S3_DIR")
  export PANTHEON_TEST_S3_ENDPOINT
  echo "test: S3 server started at $PANTHEON_TEST_S3_ENDPOINT" >&2
fi

# Each end-to-end test creates its own pantheon_test_* database; drop the
# ones earlier runs left behind.
psql -q -h 127.0.0.1 -U postgres -d postgres -At \
  -c "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'pantheon_test_%'" \
  | psql -q -h 127.0.0.1 -U postgres -d postgres >/dev/null

cargo test --workspace "$@"
