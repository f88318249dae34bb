#!/usr/bin/env bash
# Smoke run of the built binaries, as a user would run them:
# - the migration CLI up/status/down/fresh on SQLite and on PostgreSQL;
# - the README's quickstart block, run as written except that it uses the
#   debug binary (CI does not spend a release build on it) and free ports;
# - the self-description: /openapi.json, /playground, and /metrics on its
#   own listener;
# - graceful shutdown on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cargo build -q -p pantheon-api -p migration
bin="$root/target/debug"
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "smoke: migration CLI on SQLite"
export DATABASE_URL="sqlite://$work/cli.db?mode=rwc"
"$bin/migration" up
"$bin/migration" status | grep -q Applied
"$bin/migration" down
"$bin/migration" fresh

echo "smoke: migration CLI on PostgreSQL"
db="pantheon_test_smoke_$$"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
"$bin/migration" up
"$bin/migration" down
"$bin/migration" up
"$bin/migration" status | grep -q Applied
unset DATABASE_URL

echo "smoke: README quickstart"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
quickstart=$(sed -n '/<!-- quickstart -->/,/<!-- \/quickstart -->/p' README.md | sed '/^```/d;/^<!--/d' \
  | sed "s#cargo run --release -q -p pantheon-api --#$bin/pantheon#g; s#cargo run --release -p pantheon-api#$bin/pantheon#g; s#127.0.0.1:8080#127.0.0.1:$port#g")
cd "$work"
export PANTHEON__SERVER__ADDR="127.0.0.1:$port"
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PANTHEON__SERVER__METRICS_ADDR="127.0.0.1:$metrics_port"
output=$(bash -euo pipefail -c "$quickstart" 2>&1) || { echo "$output"; exit 1; }
echo "$output" | tail -n 3
echo "$output" | grep -q '"status":"completed"' || { echo "smoke: the quickstart turn did not complete"; exit 1; }
server_pid=$(pgrep -f "^$bin/pantheon$" | head -n 1 || true)
[ -n "$server_pid" ] || { echo "smoke: the quickstart's server is not running"; exit 1; }

echo "smoke: OpenAPI, playground, metrics"
curl -sf -o openapi.json "http://127.0.0.1:$port/openapi.json"
grep -q '"openapi": "3.1.0"' openapi.json || { echo "smoke: no OpenAPI 3.1 document"; exit 1; }
curl -sf -o playground.html "http://127.0.0.1:$port/playground"
grep -q '<title>Pantheon playground</title>' playground.html || { echo "smoke: no playground"; exit 1; }
curl -sf -o metrics.txt "http://127.0.0.1:$metrics_port/metrics"
grep -q '^pantheon_turns_total{endpoint="json",status="completed"} 1$' metrics.txt \
  || { echo "smoke: /metrics does not count the quickstart's turn"; exit 1; }

echo "smoke: graceful shutdown"
kill -TERM "$server_pid"
for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$server_pid" 2>/dev/null; then echo "smoke: server ignored SIGTERM"; exit 1; fi
server_pid=""
grep -q "pantheon stopped" "$work/pantheon.log" || { echo "smoke: no clean stop in the log"; exit 1; }
echo "smoke: ok"
