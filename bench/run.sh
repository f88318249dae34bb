#!/usr/bin/env bash
# Pantheon's load benchmarks (issue 6): builds release, ensures PostgreSQL
# and Redis, installs wrk when missing, runs every scenario against fresh
# Pantheon servers on free loopback ports, and prints markdown tables: the
# scenarios, the per-turn costs, the budget verdicts and the limiter
# micro-benchmark.
#
#   bench/run.sh            # the full run (20 s per scenario, ~3 min once built)
#   bench/run.sh --quick    # a smoke test (3 s per scenario)
#   bench/run.sh --cluster  # also A against a Redis Cluster of its own (3 masters,
#                           # 3 replicas, scripts/cluster.sh), in A's rounds, and
#                           # the limiter micro-benchmark on it beside the single Redis
#
# Environment (all optional): BENCH_DURATION (seconds per scenario),
# BENCH_DB (default pantheon_bench; created afresh, dropped after a
# successful run), BENCH_LOG_LEVEL (the servers' log.level, default info),
# BENCH_KEEP=1 keeps the work directory (server logs, wrk outputs, users
# files) and the database.
#
# Scenarios compared by a budget ratio (A, B, D; the two halves of C) are
# measured in interleaved rounds of 5 s against servers running side by
# side, so drift in the machine's speed hits both sides of a ratio alike.
#
# It never touches the shared Redis on 6379: the limiters use redis-servers
# (and with --cluster a Redis Cluster) of the bench's own on free ports
# (scenario D kills its one). Every process it starts is stopped on exit.
# All traffic goes to 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
CLUSTER=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --cluster) CLUSTER=1 ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  DURATION=${BENCH_DURATION:-3}; WARMUP=1; STAT_TURNS=50
else
  DURATION=${BENCH_DURATION:-20}; WARMUP=3; STAT_TURNS=200
fi
ROUND=5
if [ "$DURATION" -le "$ROUND" ]; then ROUNDS=1; ROUND=$DURATION; else ROUNDS=$((DURATION / ROUND)); fi
DB=${BENCH_DB:-pantheon_bench}
LOG_LEVEL=${BENCH_LOG_LEVEL:-info}
USERS=1000
CONNECTIONS=64
SSE_STREAMS=2000
# 19 words: the builtin provider replies "You said:" plus one chunk a word,
# 20 chunks, each after chunk_delay_ms = 50: an ideal stream takes 1 s.
SSE_INPUT="one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
SSE_CHUNK_MS=50
SSE_IDEAL_MS=1000
JSON_INPUT="Hello, Pantheon benchmark"
HIGH=1000000000

# The helpers run.sh and compare.sh share: servers, Redis, the database.
source bench/lib.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-bench.XXXXXX")
OK=0

cleanup() {
  local status=$?
  for name in "${!SPID[@]}"; do stop_server "$name"; done
  stop_redis limiter
  stop_redis doomed
  if [ "$CLUSTER" = 1 ]; then scripts/cluster.sh stop "$WORK/cluster"; fi
  if [ "$OK" = 1 ] && [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$WORK"
    psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  else
    log "work directory kept: $WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build, services, tools -------------------------------------------------

log "building release (pantheon, pantheon-loadgen, the limiter bench)"
cargo build --release -q -p pantheon-api -p pantheon-loadgen
cargo bench -q -p pantheon-infrastructure --bench limiter --no-run
PANTHEON="$ROOT/target/release/pantheon"
LOADGEN="$ROOT/target/release/pantheon-loadgen"

log "ensuring PostgreSQL and Redis"
scripts/services.sh

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
for tool in curl psql redis-server redis-cli wrk; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done

raise_open_files

# Other work on the machine skews every figure: the load average is reported.
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)

# --- the bench's own Redis servers and database -----------------------------

REDIS_PORT=$(start_redis limiter)
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
# Scenario D's, killed during the run.
DOOMED_PORT=$(start_redis doomed)
DOOMED_URL="redis://127.0.0.1:$DOOMED_PORT"
if [ "$CLUSTER" = 1 ]; then
  log "starting a Redis Cluster (3 masters, 3 replicas)"
  CLUSTER_URLS=$(scripts/cluster.sh start "$WORK/cluster")
fi

psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
PG_URL="postgres://postgres@127.0.0.1:5432/$DB"

# Every server and the load generator mint and verify with this secret.
bench_env "$LOG_LEVEL" 5

# Server memory in MB: current and peak resident set.
rss_mb() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/${SPID[$1]}/status"; }
hwm_mb() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/${SPID[$1]}/status"; }

# Commands clients sent the limiter's Redis: commandstats also counts the
# commands a script runs inside Redis (our script's TIME, LINDEX, LRANGE,
# LSET, RPUSH, LPUSH, LTRIM, PEXPIRE, ZREMRANGEBYSCORE, ZCARD, ZADD), which
# cost no round trip, and our own INFO; both are left out (lease renewals,
# the one ZADD and PEXPIRE, are one pipeline every lease_ttl/3 for all
# running turns, not a per-turn cost). With a name (evalsha, zrem), that
# command's count only.
redis_commands() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:=,]' -v only="${1:-}" '
    /^cmdstat_/ && $1 !~ /^cmdstat_(info|time|lindex|lrange|lset|rpush|lpush|ltrim|pexpire|zremrangebyscore|zcard|zadd)$/ \
      && (only == "" || $1 == "cmdstat_" only) { n += $3 }
    END { print n + 0 }'
}

# field FILE KEY: KEY's value on the last RESULT line of FILE.
field() { grep '^RESULT ' "$1" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# fields FILE KEY: KEY's value on every RESULT line.
fields() { grep '^RESULT ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
sum() { awk '{ s += $1 } END { printf "%.3f", s }'; }
# merged_quantile FILE Q: in lib.sh.

# wrk_once KEY SERVER SECONDS SCRIPT ARGS...: one wrk run, its output
# appended to wrk-KEY.txt (the warm-up, KEY "warmup", is thrown away).
wrk_once() {
  local key=$1 server=$2 secs=$3 script=$4 out
  shift 4
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${secs}s" --latency -s "bench/wrk/$script" "${SBASE[$server]}" -- "$@" 2>&1) \
    || { printf '%s\n' "$out" >&2; die "wrk $key failed"; }
  printf '%s\n' "$out" | grep -q '^RESULT ' || { printf '%s\n' "$out" >&2; die "wrk $key printed no result"; }
  [ "$key" = warmup ] || printf '%s\n' "$out" >>"$WORK/wrk-$key.txt"
}

declare -A RATE P50 P99 ERR RSS HWM REQS
# record_wrk KEY SERVER: the rate over all rounds (requests / seconds), p50
# and p99 of all rounds' latencies together, the errors (non-2xx, socket).
record_wrk() {
  local key=$1 file="$WORK/wrk-$1.txt" secs
  REQS[$key]=$(fields "$file" requests | sum)
  secs=$(fields "$file" duration_s | sum)
  RATE[$key]=$(calc "%.1f" "${REQS[$key]} / $secs")
  P50[$key]=$(calc "%.1f" "$(merged_quantile "$file" 0.5) / 1000")
  P99[$key]=$(calc "%.1f" "$(merged_quantile "$file" 0.99) / 1000")
  ERR[$key]=$(calc "%d" "$(fields "$file" status_errors | sum) + $(fields "$file" socket_errors | sum)")
  RSS[$key]=$(rss_mb "$2")
  HWM[$key]=$(hwm_mb "$2")
}

PG_ENV=(PANTHEON__DATABASE__URL="$PG_URL" PANTHEON__REDIS__URL="$REDIS_URL"
  PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH)

# --- setup: users and sessions ----------------------------------------------

log "setup: $USERS users for the JSON scenarios, $SSE_STREAMS for the streams"
start_server setup "${PG_ENV[@]}"
"$LOADGEN" setup --base "${SBASE[setup]}" --users "$USERS" --prefix bench-a --out "$WORK/users-a.txt" >&2
"$LOADGEN" setup --base "${SBASE[setup]}" --users "$SSE_STREAMS" --prefix bench-e --out "$WORK/users-e.txt" >&2
"$LOADGEN" setup --base "${SBASE[setup]}" --users 1 --prefix bench-c --out "$WORK/users-c.txt" >&2
"$LOADGEN" setup --base "${SBASE[setup]}" --users 1 --prefix bench-s --out "$WORK/users-s.txt" >&2
stop_server setup

# --- per JSON turn on PostgreSQL: statements, commits, Redis commands ------

log "per-turn cost: $STAT_TURNS sequential JSON turns with statement logging on $DB"
PG_LOG=$(ls -t /var/log/postgresql/postgresql-*-main.log 2>/dev/null | head -n 1 || true)
# A backend reports its transaction counts when it has been idle for 10 s
# (PGSTAT_IDLE_INTERVAL) at the latest: read them after 11 s of quiet.
xact_commit() {
  sleep 11
  psql_admin -c "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'"
}
# Autovacuum's transactions count in xact_commit too: it is paused on the
# bench tables for this measurement only.
autovacuum() {
  psql -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1 -qAt \
    -c "ALTER TABLE sessions $1" -c "ALTER TABLE turns $1" -c "ALTER TABLE users $1"
}
autovacuum "SET (autovacuum_enabled = off)"
psql_admin -c "ALTER DATABASE $DB SET log_statement = 'all'"
start_server stat "${PG_ENV[@]}"
"$LOADGEN" turns --base "${SBASE[stat]}" --users "$WORK/users-s.txt" --count 5 --input "$JSON_INPUT" >/dev/null
commits_from=$(xact_commit)
log_from=$([ -r "$PG_LOG" ] && stat -c %s "$PG_LOG" || echo 0)
redis_from=$(redis_commands)
evalsha_from=$(redis_commands evalsha)
zrem_from=$(redis_commands zrem)
"$LOADGEN" turns --base "${SBASE[stat]}" --users "$WORK/users-s.txt" --count "$STAT_TURNS" --input "$JSON_INPUT" >/dev/null
redis_to=$(redis_commands)
evalsha_to=$(redis_commands evalsha)
zrem_to=$(redis_commands zrem)
log_to=$([ -r "$PG_LOG" ] && stat -c %s "$PG_LOG" || echo 0)
commits_to=$(xact_commit)
stop_server stat
psql_admin -c "ALTER DATABASE $DB RESET log_statement"
autovacuum "RESET (autovacuum_enabled)"
COMMITS_PER_TURN=$(calc "%.2f" "($commits_to - $commits_from) / $STAT_TURNS")
REDIS_PER_TURN=$(calc "%.2f" "($redis_to - $redis_from) / $STAT_TURNS")
EVALSHA_PER_TURN=$(calc "%.2f" "($evalsha_to - $evalsha_from) / $STAT_TURNS")
ZREM_PER_TURN=$(calc "%.2f" "($zrem_to - $zrem_from) / $STAT_TURNS")
if [ -r "$PG_LOG" ] && [ "$log_to" -gt "$log_from" ]; then
  tail -c +"$((log_from + 1))" "$PG_LOG" | head -c "$((log_to - log_from))" >"$WORK/statements.log"
  # Extended protocol: "LOG:  execute sqlx_s_1: UPDATE …"; simple: "LOG:  statement: BEGIN".
  grep -E "@$DB LOG:  (statement|execute [^:]*):" "$WORK/statements.log" \
    | sed -E 's/.* LOG:  (statement|execute [^:]*): //' >"$WORK/statements.txt" || true
  STMT_TOTAL=$(grep -cvE '^(BEGIN|COMMIT|ROLLBACK)' "$WORK/statements.txt" || true)
  BEGINS=$(grep -cE '^BEGIN' "$WORK/statements.txt" || true)
  STMTS_PER_TURN=$(calc "%.2f" "$STMT_TOTAL / $STAT_TURNS")
  BEGINS_PER_TURN=$(calc "%.2f" "$BEGINS / $STAT_TURNS")
  STMT_KINDS=$(grep -vE '^(BEGIN|COMMIT|ROLLBACK)' "$WORK/statements.txt" \
    | awk '{ print $1, $2, $3 }' | sort | uniq -c | sort -rn \
    | awk -v n="$STAT_TURNS" '{ c = $1; $1 = ""; printf "%s`%s` ×%.2f", sep, substr($0, 2), c / n; sep = ", " }')
else
  STMTS_PER_TURN="n/a"; BEGINS_PER_TURN="n/a"; STMT_KINDS="PostgreSQL log not readable"
fi

# --- A, B, D: JSON turns with the limiter, without it, with its Redis dead ---

order=(A B D)
if [ "$CLUSTER" = 1 ]; then order+=(AC); fi
log "${order[*]}: JSON turns from $USERS users, $CONNECTIONS connections, $ROUNDS interleaved rounds of ${ROUND}s"
start_server A "${PG_ENV[@]}"
start_server B "${PG_ENV[@]}" PANTHEON__RATE_LIMIT__ENABLED=false
start_server D PANTHEON__DATABASE__URL="$PG_URL" PANTHEON__REDIS__URL="$DOOMED_URL" \
  PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH \
  PANTHEON__RATE_LIMIT__FALLBACK=allow
if [ "$CLUSTER" = 1 ]; then
  start_server AC PANTHEON__DATABASE__URL="$PG_URL" PANTHEON__REDIS__CLUSTER_URLS="$CLUSTER_URLS" \
    PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH
fi
for s in "${order[@]}"; do wrk_once warmup "$s" "$WARMUP" turns.lua "$WORK/users-a.txt" "$JSON_INPUT"; done
# D: its Redis dies while it serves; the next checks fail and turn it degraded.
stop_redis doomed
wrk_once warmup D 1 turns.lua "$WORK/users-a.txt" "$JSON_INPUT"
D_STATE=$(curl -s "${SBASE[D]}/readyz" | sed -E 's/.*"limiter":"([^"]*)".*/\1/')
for r in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((${#order[@]} - 1))); do
    s=${order[$(((r + i) % ${#order[@]}))]}
    wrk_once "$s" "$s" "$ROUND" turns.lua "$WORK/users-a.txt" "$JSON_INPUT"
  done
done
if [ "$CLUSTER" = 1 ]; then
  AC_STATE=$(curl -s "${SBASE[AC]}/readyz" | sed -E 's/.*"limiter":"([^"]*)".*/\1/')
fi
for s in "${order[@]}"; do record_wrk "$s" "$s"; stop_server "$s"; done

# --- C: one user far over the limit, against /healthz -----------------------

log "C: refusals of one user over per_minute = 1, against GET /healthz, $ROUNDS interleaved rounds"
start_server C PANTHEON__DATABASE__URL="$PG_URL" PANTHEON__REDIS__URL="$REDIS_URL" \
  PANTHEON__RATE_LIMIT__PER_MINUTE=1 PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH
read -r C_TOKEN C_SESSION <"$WORK/users-c.txt"
C_PATH="/api/v1/sessions/$C_SESSION/turns"
C_BODY="{\"input\":\"$JSON_INPUT\"}"
c_turn() {
  curl -s -o /dev/null -w '%{http_code}' -X POST "${SBASE[C]}$C_PATH" \
    -H "Authorization: Bearer $C_TOKEN" -H 'Content-Type: application/json' -d "$C_BODY"
}
# The first turn of the minute is admitted; the second is refused by Redis
# and cached; every one after is refused from the cache, until retry_at (the
# end of the next minute, past this scenario).
first=$(c_turn); second=$(c_turn)
[ "$first" = 201 ] && [ "$second" = 429 ] || die "C: expected 201 then 429, got $first then $second"
redis_from=$(redis_commands)
wrk_once warmup C "$WARMUP" fixed.lua POST "$C_PATH" "$C_TOKEN" "$C_BODY"
wrk_once warmup C "$WARMUP" fixed.lua GET /healthz -
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    wrk_once C C "$ROUND" fixed.lua POST "$C_PATH" "$C_TOKEN" "$C_BODY"
    wrk_once H C "$ROUND" fixed.lua GET /healthz -
  else
    wrk_once H C "$ROUND" fixed.lua GET /healthz -
    wrk_once C C "$ROUND" fixed.lua POST "$C_PATH" "$C_TOKEN" "$C_BODY"
  fi
done
redis_to=$(redis_commands)
record_wrk C C
record_wrk H C
statuses() { # FILE: status:count over all rounds
  grep '^RESULT ' "$1" | tr ' ' '\n' | sed -n 's/^statuses=//p' | tr ',' '\n' \
    | awk -F: '{ n[$1] += $2 } END { for (s in n) printf "%s%s:%d", (i++ ? "," : ""), s, n[s] }'
}
C_STATUSES=$(statuses "$WORK/wrk-C.txt")
C_REFUSED=$(printf '%s' "$C_STATUSES" | tr ',' '\n' | awk -F: '$1 == 429 { n += $2 } END { print n + 0 }')
# The errors of a refusal run: anything but a 429.
ERR[C]=$(calc "%d" "${REQS[C]} - $C_REFUSED + $(fields "$WORK/wrk-C.txt" socket_errors | sum)")
# Over the warm-up refusals too, which are not in the denominator.
REDIS_PER_REFUSAL=$(calc "%.3f" "($redis_to - $redis_from) / ($C_REFUSED > 0 ? $C_REFUSED : 1)")
stop_server C

# --- E: 2,000 concurrent SSE turns ------------------------------------------

log "E: $SSE_STREAMS concurrent streams, 20 chunks × ${SSE_CHUNK_MS} ms"
start_server E "${PG_ENV[@]}" PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS=$SSE_CHUNK_MS
"$LOADGEN" sse --base "${SBASE[E]}" --users "$WORK/users-e.txt" --input "$SSE_INPUT" >"$WORK/sse.txt" \
  || { cat "$WORK/sse.txt" >&2; die "the SSE run failed"; }
E_FILE="$WORK/sse.txt"
E_COMPLETED=$(field "$E_FILE" completed)
E_WALL=$(field "$E_FILE" wall_ms)
RATE[E]=$(field "$E_FILE" events_per_s)
P50[E]=$(field "$E_FILE" p50_ms)
P99[E]=$(field "$E_FILE" p99_ms)
ERR[E]=$(($(field "$E_FILE" errors) + $(field "$E_FILE" failed)))
RSS[E]=$(rss_mb E)
HWM[E]=$(hwm_mb E)
E_FIRST_P50=$(field "$E_FILE" first_event_p50_ms)
E_FIRST_P99=$(field "$E_FILE" first_event_p99_ms)
stop_server E

# --- the limiter micro-benchmark (on the idle bench Redis) -------------------

log "limiter micro-benchmark on the bench Redis"
quick_arg=()
[ "$QUICK" = 1 ] && quick_arg=(-- --quick)
PANTHEON_BENCH_REDIS_URL="$REDIS_URL" PANTHEON_BENCH_CLUSTER_URLS="${CLUSTER_URLS:-}" \
  cargo bench -q -p pantheon-infrastructure --bench limiter \
  "${quick_arg[@]}" >"$WORK/limiter.txt" 2>"$WORK/limiter.err" \
  || { cat "$WORK/limiter.txt" "$WORK/limiter.err" >&2; die "the limiter bench failed"; }

# --- F: the embedded default: SQLite + in-process limiter --------------------

log "F: A on SQLite with the in-process limiter"
mkdir -p "$WORK/sqlite"
start_server F PANTHEON__DATABASE__URL="sqlite://$WORK/sqlite/pantheon.db?mode=rwc" \
  PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH
"$LOADGEN" setup --base "${SBASE[F]}" --users "$USERS" --prefix bench-f --out "$WORK/users-f.txt" >&2
wrk_once warmup F "$WARMUP" turns.lua "$WORK/users-f.txt" "$JSON_INPUT"
for r in $(seq 1 "$ROUNDS"); do
  wrk_once F F "$ROUND" turns.lua "$WORK/users-f.txt" "$JSON_INPUT"
done
record_wrk F F
stop_server F

# --- the report -------------------------------------------------------------

OVERHEAD=$(calc "%.1f" "(1 - ${RATE[A]} / ${RATE[B]}) * 100")
REFUSAL_RATIO=$(calc "%.2f" "${RATE[C]} / ${RATE[H]}")
D_RATIO=$(calc "%.2f" "${RATE[D]} / ${RATE[A]}")
E_RATIO=$(calc "%.2f" "$E_WALL / $SSE_IDEAL_MS")
A_TAIL=$(calc "%.2f" "${P99[A]} / ${P50[A]}")

row() { # KEY LABEL UNIT NOTE
  printf '| %s | %s %s | %s ms | %s ms | %s | %s MB | %s MB | %s |\n' \
    "$2" "$(calc "%.0f" "${RATE[$1]}")" "$3" "${P50[$1]}" "${P99[$1]}" "${ERR[$1]}" \
    "${RSS[$1]}" "${HWM[$1]}" "$4"
}
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "**missed**"; fi; }

echo
echo "### Scenarios"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes'), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); \`bench/run.sh$([ "$QUICK" = 1 ] && echo ' --quick')$([ "$CLUSTER" = 1 ] && echo ' --cluster')\`: wrk -t2 -c$CONNECTIONS, $ROUNDS round(s) of ${ROUND} s per scenario after a ${WARMUP} s warm-up, log.level $LOG_LEVEL; 1-minute load average ${LOAD_START} before the scenarios, $(cut -d' ' -f1 /proc/loadavg) after."
echo
echo "| scenario | rate | p50 | p99 | errors | RSS after | peak RSS | notes |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
row A "A: JSON turns, PostgreSQL + Redis limiter, $USERS users" "turns/s" "no limit reached"
row B "B: A with \`rate_limit.enabled = false\`" "turns/s" "limiter overhead 1 − A/B = ${OVERHEAD} %"
row C "C: one user over \`per_minute = 1\`" "refusals/s" "${REFUSAL_RATIO}× /healthz; ${REDIS_PER_REFUSAL} Redis commands per refusal; statuses ${C_STATUSES}"
row H "C: \`GET /healthz\`, same server, same rounds" "req/s" ""
row D "D: A with its Redis killed, \`fallback = allow\`" "turns/s" "${D_RATIO}× A; limiter ${D_STATE}"
if [ "$CLUSTER" = 1 ]; then
  row AC "A on a Redis Cluster (3 masters, 3 replicas)" "turns/s" "$(calc "%.2f" "${RATE[AC]} / ${RATE[A]}")× A; limiter ${AC_STATE}"
fi
row E "E: $SSE_STREAMS concurrent SSE turns, 20 chunks × ${SSE_CHUNK_MS} ms" "events/s" "${E_COMPLETED}/${SSE_STREAMS} completed (\`turn.completed\`); wall ${E_WALL} ms = ${E_RATIO}× the ideal 1 s; first event p50 ${E_FIRST_P50} ms, p99 ${E_FIRST_P99} ms; p50/p99 per stream"
row F "F: A on SQLite + in-process limiter (the embedded default)" "turns/s" ""
echo
echo "p50/p99: of all rounds' requests together, as wrk measures them (E: each stream's start to its terminal event). Errors: non-2xx and socket errors (C: anything but a 429)."
echo
echo "Per JSON turn on PostgreSQL ($STAT_TURNS sequential turns): ${STMTS_PER_TURN} SQL statements besides BEGIN/COMMIT (${STMT_KINDS}), ${BEGINS_PER_TURN} BEGIN, ${COMMITS_PER_TURN} commits (\`pg_stat_database.xact_commit\`), ${REDIS_PER_TURN} Redis commands (${EVALSHA_PER_TURN} \`EVALSHA\` admission, ${ZREM_PER_TURN} \`ZREM\` lease release; sequential turns, so no release shares a pipeline with a check)."
echo
echo "### Budget"
echo
echo "| target | budget | measured | verdict |"
echo "|---|---|---|---|"
echo "| limiter overhead 1 − A/B | ≤ 10 % | ${OVERHEAD} % | $(verdict "$OVERHEAD <= 10") |"
echo "| refusal throughput vs /healthz | ≥ 0.7× | ${REFUSAL_RATIO}× | $(verdict "$REFUSAL_RATIO >= 0.7") |"
echo "| Redis commands per cached refusal | 0 | ${REDIS_PER_REFUSAL} | $(verdict "$REDIS_PER_REFUSAL == 0") |"
echo "| Redis down (D) vs A | ≥ 0.95× | ${D_RATIO}× | $(verdict "$D_RATIO >= 0.95") |"
echo "| E: streams completed | all ${SSE_STREAMS} | ${E_COMPLETED} | $(verdict "${E_COMPLETED:-0} == $SSE_STREAMS && ${ERR[E]} == 0") |"
echo "| E: wall time vs the ideal 1 s | ≤ 1.5× | ${E_RATIO}× | $(verdict "$E_RATIO <= 1.5") |"
echo "| E: peak RSS | ≤ 200 MB | ${HWM[E]} MB | $(verdict "${HWM[E]} <= 200") |"
if [ "$STMTS_PER_TURN" = n/a ]; then
  echo "| SQL statements per JSON turn | ≤ 4 | n/a | not measured |"
else
  echo "| SQL statements per JSON turn | ≤ 4 | ${STMTS_PER_TURN} | $(verdict "$STMTS_PER_TURN <= 4") |"
fi
echo "| commits per JSON turn | ≤ 2 | ${COMMITS_PER_TURN} | $(verdict "$COMMITS_PER_TURN <= 2") |"
echo "| Redis commands per JSON turn (admission + release) | 2 | ${REDIS_PER_TURN} | $(verdict "$REDIS_PER_TURN <= 2") |"
echo "| A: p99 / p50 at $CONNECTIONS connections | ≤ 4× | ${A_TAIL}× | $(verdict "$A_TAIL <= 4") |"
echo
echo "### Limiter micro-benchmark"
echo
echo "\`cargo bench -p pantheon-infrastructure --bench limiter$([ "$QUICK" = 1 ] && echo ' -- --quick')\` on the bench Redis$([ "$CLUSTER" = 1 ] && echo ' and the bench cluster'):"
echo
cat "$WORK/limiter.txt"
OK=1
