#!/usr/bin/env bash
# Same-run before/after of two builds: the figures a change's note quotes.
# Both builds serve side by side, on one database and one bench Redis, and
# their rounds alternate, so drift in this machine's speed (±15 % from
# minute to minute) hits both alike. Per round it prints the rate and the
# CPU time per request of the server, PostgreSQL and Redis (/proc), then
# per build the ratio of the totals and the median of the rounds' ratios.
#
#   bench/compare.sh BEFORE AFTER [json] [refusal] [sse]
#
# BEFORE and AFTER are `pantheon` binaries, e.g. of an earlier commit:
#   git worktree add --detach /tmp/before <commit> && (cd /tmp/before && cargo build --release -p pantheon-api)
#   bench/compare.sh /tmp/before/target/release/pantheon target/release/pantheon
# Both builds migrate the one database at start, so they must share its
# schema; when AFTER only adds a migration BEFORE can run beside (a new
# nullable column, an index), set
# COMPARE_BEFORE_ENV=PANTHEON__DATABASE__AUTO_MIGRATE=false and BEFORE runs
# on AFTER's schema without migrating. COMPARE_AFTER_ENV sets AFTER's own
# extra settings: one build against itself with a feature off and on, e.g.
#   COMPARE_AFTER_ENV="PANTHEON__RATE_LIMIT__TOKENS_PER_MINUTE=1000000000" \
#     bench/compare.sh target/release/pantheon target/release/pantheon json
# Scenarios (default: all): json — run.sh's A and B on each build (the
# limiter overhead 1 − A/B per build); refusal — C and /healthz on each;
# sse — E on a fresh server of each, alternately.
# COMPARE_AFTER_KEYED=1 sends every JSON turn of AFTER's servers with an
# `Idempotency-Key` of its own (what a key costs a first attempt), e.g.
#   COMPARE_AFTER_KEYED=1 bench/compare.sh target/release/pantheon target/release/pantheon json
# COMPARE_AFTER_FILE=1 has every JSON turn of AFTER's servers name a small
# text file of its user's (COMPARE_FILE_BYTES, default 4096; uploaded once
# per user at setup, not attached to the session): the builtin model reads
# it with one `file_read` round, then answers (what a turn's tool round
# costs), e.g.
#   COMPARE_AFTER_FILE=1 bench/compare.sh target/release/pantheon target/release/pantheon json
# AFTER must be a build with files (BEFORE's turns name none).
# Each line also gives the Redis commands per request (or per stream), so
# a change that adds a round trip shows; json ends with each server's p50
# and p99 over all its rounds.
# Environment: COMPARE_ROUNDS (default 4), COMPARE_SECS (seconds per round,
# default 5), COMPARE_REFUSAL_INPUT (the refused turn's input, plain text
# without quotes or backslashes; e.g. 32,000 characters of words, with
# COMPARE_AFTER_ENV setting a token budget: the cost of a cached refusal
# with and without one). All traffic goes to 127.0.0.1; every process is
# stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,20p' "$0"; exit 2; }
BEFORE=$(realpath "$1") AFTER=$(realpath "$2")
shift 2
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(json refusal sse)
ROUNDS=${COMPARE_ROUNDS:-4}
SECS=${COMPARE_SECS:-5}
HIGH=1000000000
DB=pantheon_compare

source bench/lib.sh

# The same packages as run.sh builds: another set unifies features differently
# and rebuilds the tree.
cargo build --release -q -p pantheon-api -p pantheon-loadgen
LOADGEN="$(pwd)/target/release/pantheon-loadgen"
scripts/services.sh
command -v wrk >/dev/null || die "wrk is missing (bench/run.sh installs it)"
raise_open_files

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-compare.XXXXXX")
cleanup_on_exit limiter

bench_env info 2
REDIS_PORT=$(start_redis limiter)
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
ENV=(PANTHEON__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB"
  PANTHEON__REDIS__URL="redis://127.0.0.1:$REDIS_PORT")
HIGH_ENV=("${ENV[@]}" PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH)

# CPU ticks (1/100 s) of a process, of every PostgreSQL process, of the Redis.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# A process that exits between the glob and the read makes cat fail; with
# pipefail that would end the run, so its status is ignored.
pg_ticks() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '$2 ~ /^\(postgres/ { n += $14 + $15 } END { print n + 0 }'; }
redis_ticks() { ticks "$(cat "$WORK/redis-limiter.pid")"; }
redis_commands() { redis-cli -p "$REDIS_PORT" INFO stats | awk -F: '/^total_commands_processed:/ { print $2 + 0 }'; }
per() { awk -v t="$1" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? t / n : 0) }'; }
us_per() { awk -v t="$1" -v n="$2" 'BEGIN { printf "%.0f", (n > 0 ? t * 10000 / n : 0) }'; }

# measure LABEL SERVER SCRIPT ARGS...: one wrk round, one line, and its
# rate appended to $WORK/rate-LABEL (its RESULT and QUANTILES lines to
# $WORK/wrk-LABEL, for the latencies over all rounds).
measure() {
  local label=$1 server=$2 script=$3 out n rps s0 p0 r0 c0 s1 p1 r1 c1
  shift 3
  s0=$(ticks "${SPID[$server]}"); p0=$(pg_ticks); r0=$(redis_ticks); c0=$(redis_commands)
  wrk -t2 -c64 -d"${SECS}s" -s "bench/wrk/$script" "${SBASE[$server]}" -- "$@" \
    | grep -E '^(RESULT|QUANTILES) ' >>"$WORK/wrk-$label"
  out=$(grep '^RESULT ' "$WORK/wrk-$label" | tail -n 1)
  s1=$(ticks "${SPID[$server]}"); p1=$(pg_ticks); r1=$(redis_ticks); c1=$(redis_commands)
  n=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$out")
  rps=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$out")
  echo "$rps" >>"$WORK/rate-$label"
  printf '%-10s %9s /s  server %4s µs  postgres %4s µs  redis %3s µs  %s cmds  %s\n' "$label" "$rps" \
    "$(us_per $((s1 - s0)) "$n")" "$(us_per $((p1 - p0)) "$n")" "$(us_per $((r1 - r0)) "$n")" \
    "$(per $((c1 - c0)) "$n")" \
    "$(grep -oE 'statuses=[^ ]*|(status|socket)_errors=[1-9][0-9]*' <<<"$out" | tr '\n' ' ' || true)"
}
# latency LABEL: p50 / p99 in ms of all LABEL's rounds together.
latency() {
  awk -v a="$(merged_quantile "$WORK/wrk-$1" 0.5)" -v b="$(merged_quantile "$WORK/wrk-$1" 0.99)" \
    'BEGIN { printf "%.1f / %.1f ms", a / 1000, b / 1000 }'
}
total() { awk '{ s += $1 } END { printf "%.0f", s }' "$WORK/rate-$1"; }
ratio() { awk -v a="$(total "$1")" -v b="$(total "$2")" 'BEGIN { printf "%.3f", a / b }'; }
# The median over rounds of round r's rate of $1 ÷ round r's rate of $2: a
# round the machine slowed for one build only moves it less than the total.
median_ratio() {
  paste "$WORK/rate-$1" "$WORK/rate-$2" | awk '{ print $1 / $2 }' | sort -g |
    awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
build() { if [ "$1" = after ]; then echo "$AFTER"; else echo "$BEFORE"; fi; }
# Extra settings of the BEFORE build's servers (space-separated VAR=value).
read -r -a BEFORE_ENV <<<"${COMPARE_BEFORE_ENV:-}"
read -r -a AFTER_ENV <<<"${COMPARE_AFTER_ENV:-}"
build_env() {
  if [ "$1" = before ] && [ ${#BEFORE_ENV[@]} -gt 0 ]; then printf '%s\n' "${BEFORE_ENV[@]}"; fi
  if [ "$1" = after ] && [ ${#AFTER_ENV[@]} -gt 0 ]; then printf '%s\n' "${AFTER_ENV[@]}"; fi
}

log "setup: users and sessions"
start_build setup "$AFTER" "${HIGH_ENV[@]}"
"$LOADGEN" setup --base "${SBASE[setup]}" --users 1000 --prefix cmp-a --out "$WORK/users-a.txt" >&2
"$LOADGEN" setup --base "${SBASE[setup]}" --users 1 --prefix cmp-c --out "$WORK/users-c.txt" >&2
[[ " ${SCENARIOS[*]} " == *" sse "* ]] &&
  "$LOADGEN" setup --base "${SBASE[setup]}" --users 2000 --prefix cmp-e --out "$WORK/users-e.txt" >&2
# AFTER's JSON turns: the same users and sessions, with a file each to name
# (`token session file_id` lines). One upload per user stays within the
# default uploads window; the bytes go to $WORK/files (lib.sh), which every
# server on this database shares.
AFTER_USERS="$WORK/users-a.txt"
if [ "${COMPARE_AFTER_FILE:-0}" = 1 ]; then
  "$LOADGEN" upload --base "${SBASE[setup]}" --users "$WORK/users-a.txt" --concurrency 16 \
    --bytes "${COMPARE_FILE_BYTES:-4096}" --out "$WORK/users-a-file.txt" >&2
  AFTER_USERS="$WORK/users-a-file.txt"
fi
stop_server setup
echo "before: $BEFORE"
echo "after:  $AFTER"

for scenario in "${SCENARIOS[@]}"; do
  case "$scenario" in
    json)
      start_build A-before "$BEFORE" "${HIGH_ENV[@]}" "${BEFORE_ENV[@]}"
      start_build B-before "$BEFORE" "${HIGH_ENV[@]}" "${BEFORE_ENV[@]}" PANTHEON__RATE_LIMIT__ENABLED=false
      start_build A-after "$AFTER" "${HIGH_ENV[@]}" "${AFTER_ENV[@]}"
      start_build B-after "$AFTER" "${HIGH_ENV[@]}" "${AFTER_ENV[@]}" PANTHEON__RATE_LIMIT__ENABLED=false
      for s in A-before B-before; do
        wrk -t2 -c64 -d2s -s bench/wrk/turns.lua "${SBASE[$s]}" -- "$WORK/users-a.txt" >/dev/null
      done
      for s in A-after B-after; do
        wrk -t2 -c64 -d2s -s bench/wrk/turns.lua "${SBASE[$s]}" -- "$AFTER_USERS" >/dev/null
      done
      keyed=()
      [ "${COMPARE_AFTER_KEYED:-0}" = 1 ] && keyed=("Hello, Pantheon benchmark" keyed)
      for r in $(seq 1 "$ROUNDS"); do
        for s in A-before B-before; do measure "$s" "$s" turns.lua "$WORK/users-a.txt"; done
        for s in A-after B-after; do measure "$s" "$s" turns.lua "$AFTER_USERS" "${keyed[@]}"; done
      done
      echo "json: A after/before $(ratio A-after A-before); limiter overhead 1 − A/B:" \
        "before $(awk -v x="$(ratio A-before B-before)" 'BEGIN { printf "%.1f", (1 - x) * 100 }') %," \
        "after $(awk -v x="$(ratio A-after B-after)" 'BEGIN { printf "%.1f", (1 - x) * 100 }') %"
      echo "json, medians of the rounds' ratios: A after/before $(median_ratio A-after A-before);" \
        "limiter overhead 1 − A/B: before" \
        "$(awk -v x="$(median_ratio A-before B-before)" 'BEGIN { printf "%.1f", (1 - x) * 100 }') %," \
        "after $(awk -v x="$(median_ratio A-after B-after)" 'BEGIN { printf "%.1f", (1 - x) * 100 }') %"
      echo "json latency p50 / p99 over all rounds: A-before $(latency A-before), B-before $(latency B-before)," \
        "A-after $(latency A-after), B-after $(latency B-after)"
      for s in A-before B-before A-after B-after; do stop_server "$s"; done
      ;;
    refusal)
      read -r token session <"$WORK/users-c.txt"
      path="/api/v1/sessions/$session/turns"
      body="{\"input\":\"${COMPARE_REFUSAL_INPUT:-Hello, Pantheon benchmark}\"}"
      for b in before after; do
        mapfile -t extra < <(build_env "$b")
        start_build "C-$b" "$(build "$b")" "${ENV[@]}" "${extra[@]}" PANTHEON__RATE_LIMIT__PER_MINUTE=1
        for _ in 1 2; do
          curl -s -o /dev/null -X POST "${SBASE[C-$b]}$path" -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/json' -d "$body"
        done
      done
      for r in $(seq 1 "$ROUNDS"); do
        for b in before after; do
          measure "C-$b" "C-$b" fixed.lua POST "$path" "$token" "$body"
          measure "H-$b" "C-$b" fixed.lua GET /healthz -
        done
      done
      echo "refusal / healthz: before $(ratio C-before H-before), after $(ratio C-after H-after)"
      echo "refusal / healthz, medians of the rounds' ratios: before" \
        "$(median_ratio C-before H-before), after $(median_ratio C-after H-after)"
      stop_server C-before
      stop_server C-after
      ;;
    sse)
      input="one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
      for r in $(seq 1 "$ROUNDS"); do
        for b in before after; do
          mapfile -t extra < <(build_env "$b")
          start_build "E-$b" "$(build "$b")" "${HIGH_ENV[@]}" "${extra[@]}" PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS=50
          s0=$(ticks "${SPID[E-$b]}"); p0=$(pg_ticks); r0=$(redis_ticks); c0=$(redis_commands)
          out=$("$LOADGEN" sse --base "${SBASE[E-$b]}" --users "$WORK/users-e.txt" --input "$input" | grep '^RESULT ')
          s1=$(ticks "${SPID[E-$b]}"); p1=$(pg_ticks); r1=$(redis_ticks); c1=$(redis_commands)
          done_n=$(grep -oE 'completed=[0-9]+' <<<"$out" | cut -d= -f2)
          wall=$(grep -oE 'wall_ms=[0-9]+' <<<"$out" | cut -d= -f2)
          awk -v n="$done_n" -v w="$wall" 'BEGIN { printf "%.1f\n", n * 1000 / w }' >>"$WORK/rate-E-$b"
          printf 'E-%-8s %s  server %s s  postgres %s s  redis %s s, %s cmds/stream  peak RSS %s MB\n' "$b" \
            "$(grep -oE '(completed|wall_ms|first_event_p99_ms)=[0-9.]+' <<<"$out" | tr '\n' ' ')" \
            "$(awk -v t=$((s1 - s0)) 'BEGIN { printf "%.2f", t / 100 }')" \
            "$(awk -v t=$((p1 - p0)) 'BEGIN { printf "%.2f", t / 100 }')" \
            "$(awk -v t=$((r1 - r0)) 'BEGIN { printf "%.2f", t / 100 }')" "$(per $((c1 - c0)) "$done_n")" \
            "$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/${SPID[E-$b]}/status")"
          stop_server "E-$b"
        done
      done
      echo "sse: streams per second after/before $(ratio E-after E-before), median of the rounds' $(median_ratio E-after E-before)"
      ;;
    *) die "unknown scenario $scenario (json, refusal, sse)" ;;
  esac
done
