#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the figures the
# machine's noise does not move (a rate here swings ±30 % from round to
# round). Each build's server runs under callgrind with instrumentation off
# while it starts and warms up, then on for a fixed load; its own bench
# Redis runs under callgrind too, counted over the same load. A figure is
# the instructions counted ÷ the responses the load generator received.
#
#   bench/instructions.sh BEFORE AFTER [json] [budget] [refusal]
#
# Scenarios (default: all): json — a JSON turn with the Redis limiter (A)
# and with `rate_limit.enabled = false` (B): the limiter's instructions per
# turn, the server's and Redis's; budget — A with token budgets on;
# refusal — a cached `429` (C) and `GET /healthz` (H) on one server.
# PostgreSQL is not counted (it does the same work with and without the
# limiter). Under valgrind a server runs some 30× slower, so its pipelines
# batch fewer checks than at full speed: compare builds with each other,
# not with the rates of compare.sh. COUNT_SECS (default 10) is the length
# of each counted load; COUNT_KEEP=DIR keeps the callgrind dumps there (one
# per load and process), for `callgrind_annotate --inclusive=yes`. All
# traffic goes to 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,20p' "$0"; exit 2; }
BEFORE=$(realpath "$1") AFTER=$(realpath "$2")
shift 2
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(json budget refusal)
SECS=${COUNT_SECS:-10}
HIGH=1000000000
DB=pantheon_instructions

source bench/lib.sh

command -v valgrind >/dev/null || die "valgrind is missing (apt-get install valgrind)"
command -v wrk >/dev/null || die "wrk is missing (bench/run.sh installs it)"
cargo build --release -q -p pantheon-api -p pantheon-loadgen
LOADGEN="$(pwd)/target/release/pantheon-loadgen"
scripts/services.sh
raise_open_files

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-instructions.XXXXXX")
REDIS_PID=
cleanup() {
  local status=$?
  for name in "${!SPID[@]}"; do stop_server "$name"; done
  [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null || true
  stop_redis setup
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  if [ -n "${COUNT_KEEP:-}" ]; then
    mkdir -p "$COUNT_KEEP" && cp "$WORK"/*.cg.* "$COUNT_KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_env warn 2
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
DB_ENV=(PANTHEON__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB"
  PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH)

# A Redis under callgrind, counted from zero at each load.
REDIS_PORT=$("$LOADGEN" free-port)
valgrind --tool=callgrind --callgrind-out-file="$WORK/redis.cg" -q \
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 1 300); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping | grep -q PONG || die "the counted Redis did not start"

# The instructions a callgrind process executed since its last zeroing.
counted() {
  local pid=$1 out
  out=$(callgrind_control -d "$pid" >/dev/null && ls -t "$2".* 2>/dev/null | head -1)
  [ -n "$out" ] || die "no callgrind dump of $pid"
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

# start_counted NAME BINARY [VAR=value ...]: start_build's server under
# callgrind, instrumentation off until the load.
start_counted() {
  START_WRAP=(valgrind --tool=callgrind --instr-atstart=no -q --callgrind-out-file="$WORK/$1.cg")
  START_TRIES=600 start_build "$@"
  START_WRAP=()
}

# count LABEL SERVER SCRIPT ARGS...: one counted load; prints the server's
# and Redis's instructions per response.
count() {
  local label=$1 server=$2 script=$3 pid out n
  shift 3
  pid=${SPID[$server]}
  wrk -t1 -c8 -d3s -s "bench/wrk/$script" "${SBASE[$server]}" -- "$@" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  callgrind_control -z "$REDIS_PID" >/dev/null
  out=$(wrk -t1 -c8 -d"${SECS}s" -s "bench/wrk/$script" "${SBASE[$server]}" -- "$@" | grep '^RESULT ')
  n=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$out")
  local server_ir redis_ir
  server_ir=$(counted "$pid" "$WORK/$server.cg")
  redis_ir=$(counted "$REDIS_PID" "$WORK/redis.cg")
  callgrind_control -i off "$pid" >/dev/null
  printf '%-10s %7s responses  server %9.0f instr  redis %7.0f instr  per response  %s\n' "$label" "$n" \
    "$(awk -v i="$server_ir" -v n="$n" 'BEGIN { print i / n }')" \
    "$(awk -v i="$redis_ir" -v n="$n" 'BEGIN { print i / n }')" \
    "$(grep -oE 'statuses=[^ ]*' <<<"$out" || true)"
}

log "setup: users and sessions"
start_build setup "$AFTER" "${DB_ENV[@]}"
"$LOADGEN" setup --base "${SBASE[setup]}" --users 200 --prefix ins-a --out "$WORK/users-a.txt" >&2
"$LOADGEN" setup --base "${SBASE[setup]}" --users 1 --prefix ins-c --out "$WORK/users-c.txt" >&2
stop_server setup
echo "before: $BEFORE"
echo "after:  $AFTER"

REDIS_ENV=(PANTHEON__REDIS__URL="redis://127.0.0.1:$REDIS_PORT")
BUDGET_ENV=(PANTHEON__RATE_LIMIT__TOKENS_PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__TOKENS_PER_HOUR=$HIGH)
for scenario in "${SCENARIOS[@]}"; do
  for b in before after; do
    binary=$BEFORE
    [ "$b" = after ] && binary=$AFTER
    case "$scenario" in
      json)
        start_counted "A-$b" "$binary" "${DB_ENV[@]}" "${REDIS_ENV[@]}"
        count "A-$b" "A-$b" turns.lua "$WORK/users-a.txt"
        stop_server "A-$b"
        start_counted "B-$b" "$binary" "${DB_ENV[@]}" PANTHEON__RATE_LIMIT__ENABLED=false
        count "B-$b" "B-$b" turns.lua "$WORK/users-a.txt"
        stop_server "B-$b"
        ;;
      budget)
        start_counted "T-$b" "$binary" "${DB_ENV[@]}" "${REDIS_ENV[@]}" "${BUDGET_ENV[@]}"
        count "T-$b" "T-$b" turns.lua "$WORK/users-a.txt"
        stop_server "T-$b"
        ;;
      refusal)
        read -r token session <"$WORK/users-c.txt"
        path="/api/v1/sessions/$session/turns"
        body='{"input":"Hello, Pantheon benchmark"}'
        start_counted "C-$b" "$binary" "PANTHEON__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$DB" \
          "${REDIS_ENV[@]}" PANTHEON__RATE_LIMIT__PER_MINUTE=1
        for _ in 1 2; do
          curl -s -o /dev/null -X POST "${SBASE[C-$b]}$path" -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/json' -d "$body"
        done
        count "C-$b" "C-$b" fixed.lua POST "$path" "$token" "$body"
        count "H-$b" "C-$b" fixed.lua GET /healthz -
        stop_server "C-$b"
        ;;
      *) die "unknown scenario $scenario (json, budget, refusal)" ;;
    esac
  done
done
