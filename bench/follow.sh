#!/usr/bin/env bash
# Turns that survive the network, across two instances over one PostgreSQL
# and one Redis: streams cut at random points and resumed on either
# instance (missing and repeated characters, time to the first resumed
# event), and turns cancelled from the instance that does not run them
# (time to the cancel's answer and to the running stream's end).
#
#   bench/follow.sh [TRIALS] [CANCELS]     # defaults 1000 and 200
#
# Environment: FOLLOW_CLUSTER_URLS (comma-separated Redis Cluster seeds
# instead of a bench Redis). All traffic goes to 127.0.0.1; every process
# is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
TRIALS=${1:-1000}
CANCELS=${2:-200}
DB=pantheon_follow

source bench/lib.sh

cargo build --release -q -p pantheon-api -p pantheon-loadgen
LOADGEN="$(pwd)/target/release/pantheon-loadgen"
BINARY="$(pwd)/target/release/pantheon"
scripts/services.sh
raise_open_files

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-follow.XXXXXX")
cleanup_on_exit bus

bench_env info 2
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
if [ -n "${FOLLOW_CLUSTER_URLS:-}" ]; then
  REDIS=(PANTHEON__REDIS__CLUSTER_URLS="$FOLLOW_CLUSTER_URLS")
else
  REDIS=(PANTHEON__REDIS__URL="redis://127.0.0.1:$(start_redis bus)")
fi
ENV=(PANTHEON__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB" "${REDIS[@]}"
  PANTHEON__REDIS__TIMEOUT_MS=500
  PANTHEON__RATE_LIMIT__PER_MINUTE=1000000 PANTHEON__RATE_LIMIT__PER_HOUR=1000000
  PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS=20)

start_build one "$BINARY" "${ENV[@]}"
start_build two "$BINARY" "${ENV[@]}"
"$LOADGEN" setup --base "${SBASE[one]}" --users 50 --prefix follow --out "$WORK/users.txt" >&2
input="one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) cores; two instances, $([ -n "${FOLLOW_CLUSTER_URLS:-}" ] && echo 'a Redis Cluster' || echo 'one Redis'), a 17-chunk reply at 20 ms a chunk"
log "resume: $TRIALS trials"
"$LOADGEN" resume --bases "${SBASE[one]},${SBASE[two]}" --users "$WORK/users.txt" --trials "$TRIALS" --input "$input" | grep '^RESULT'
log "cancel: $CANCELS turns"
"$LOADGEN" cancel --bases "${SBASE[one]},${SBASE[two]}" --users "$WORK/users.txt" --count "$CANCELS" \
  --input "$input $input $input $input $input" | grep '^RESULT'
