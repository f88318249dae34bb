#!/usr/bin/env bash
# Redis round trips and commands per JSON turn, with token budgets off and
# on, and with an `Idempotency-Key` on every turn (budgets off: what a key
# adds): one Pantheon (release build, SQLite, builtin provider) per case on its
# own redis-server, N sequential turns (so no release shares a pipeline with
# a check), then the limiter Redis's counters per turn: `total_reads_processed`
# (one read per pipeline the server sent: its round trips; redis-cli's own
# reads are subtracted) and `INFO commandstats` of the commands it sent
# (EVALSHA: admissions, and releases that refund; ZREM: releases, sent or
# run by the release script — commandstats counts a script's calls too;
# XADD: the turn's journal entries, sent by the bus's writer, which shares
# its pipelines among turns under load but not here, one turn at a time).
#
#   bench/round_trips.sh [TURNS]     (default 200)
#
# All traffic goes to 127.0.0.1; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TURNS=${1:-200}
WORK=$(mktemp -d /tmp/pantheon-round-trips.XXXXXX)
source bench/lib.sh
cargo build --release -q -p pantheon-api -p pantheon-loadgen
PANTHEON=$(realpath target/release/pantheon) LOADGEN=$(realpath target/release/pantheon-loadgen)
cleanup() {
  for s in "${!SPID[@]}"; do stop_server "$s"; done
  for r in off on key; do stop_redis "$r"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
bench_env warn 1

# stat PORT SECTION FIELD: a field of INFO; a commandstats line is
# `cmdstat_<name>:calls=<n>,…`, so its calls are the third field.
stat() { redis-cli -p "$1" info "$2" | tr -d '\r' | awk -F'[:=,]' -v k="$3" '$1 == k { print ($2 == "calls" ? $3 : $2); exit }'; }
calls() { local c; c=$(stat "$1" commandstats "cmdstat_$2"); echo "${c:-0}"; }

echo "| case | turns | round trips / turn | EVALSHA / turn | ZREM / turn | XADD / turn |"
echo "|---|---|---|---|---|---|"
for case in off on key; do
  port=$(start_redis "$case")
  extra=()
  [ "$case" = on ] && extra=(PANTHEON__RATE_LIMIT__TOKENS_PER_MINUTE=1000000000 PANTHEON__RATE_LIMIT__TOKENS_PER_HOUR=1000000000)
  start_server "$case" PANTHEON__DATABASE__URL="sqlite://$WORK/$case.db?mode=rwc" \
    PANTHEON__REDIS__URL="redis://127.0.0.1:$port" PANTHEON__RATE_LIMIT__PER_MINUTE=1000000 \
    PANTHEON__RATE_LIMIT__PER_HOUR=1000000 "${extra[@]}"
  token=$(env PANTHEON__DATABASE__URL="sqlite://$WORK/$case.db?mode=rwc" "$PANTHEON" token --user "rt-$case")
  base=${SBASE[$case]}
  session=$(curl -sf -X POST "$base/api/v1/sessions" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
  sent=0
  turn() {
    local key=()
    sent=$((sent + 1))
    [ "$case" = key ] && key=(-H "Idempotency-Key: rt-$sent")
    curl -sf -o /dev/null -X POST "$base/api/v1/sessions/$session/turns" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "${key[@]}" \
      -d '{"input": "a turn of a few words"}'
  }
  turn; sleep 0.2 # connect, load the script
  reads0=$(stat "$port" stats total_reads_processed); e0=$(calls "$port" evalsha); z0=$(calls "$port" zrem)
  x0=$(calls "$port" xadd)
  for _ in $(seq 1 "$TURNS"); do turn; done
  sleep 0.2 # the last release
  reads1=$(stat "$port" stats total_reads_processed); e1=$(calls "$port" evalsha); z1=$(calls "$port" zrem)
  x1=$(calls "$port" xadd)
  # Four INFOs between the two samples.
  awk -v c="$case" -v n="$TURNS" -v r=$((reads1 - reads0 - 4)) -v e=$((e1 - e0)) -v z=$((z1 - z0)) \
    -v x=$((x1 - x0)) 'BEGIN { printf "| %s | %d | %.2f | %.2f | %.2f | %.2f |\n", c, n, r / n, e / n, z / n, x / n }'
  stop_server "$case"
done
