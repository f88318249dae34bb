#!/usr/bin/env bash
# Upload throughput and the server's memory while it takes files: the same
# files (100 × 10 MiB of text) sent to POST /api/v1/files 1, 10 and 100 at
# a time, then one 1 GiB file; per run the throughput (bytes stored ÷ wall
# time), the upload latencies, the server's CPU, and its resident set before
# (VmRSS, after a warm-up) and at its peak (VmHWM, reset once warm).
#
#   bench/uploads.sh
#
# The 1 GiB file is sent to 2 × UPLOADS_BIG_RUNS fresh servers: half warmed
# with small files only (its peak over its RSS before is what the target of
# ≤ 32 MiB is judged on, the largest of them: the baseline moves by several
# MiB from one server to the next), half warmed with two files of 12 MiB,
# past the store's 5 MiB part (so the memory the multipart path keeps after
# its first use is in their baseline): the difference tells what is a
# one-time cost and what grows with the file.
#
# Environment (all optional): UPLOADS_LEVELS (uploads at once, default
# "1 10 100"; empty: none), UPLOADS_COUNT (files per level, default 100),
# UPLOADS_MIB (each file, default 10), UPLOADS_BIG_MIB (the single large
# file, default 1024; 0 skips it), UPLOADS_BIG_RUNS (default 3),
# UPLOADS_CHUNK (bytes per piece the load generator sends, default 65536),
# BENCH_KEEP=1 keeps the work directory (server logs, files).
#
# Each run gets a fresh server on the embedded default (SQLite and the
# local files store, both in a temp dir) and a fresh user, so no run's
# memory, files or quota is left to the next: the allocator keeps freed
# memory, so a server that took 100 uploads at once would start the next
# run with a larger RSS. The limits a run would cross are raised:
# uploads_per_minute, quota_bytes, max_files (and max_file_bytes for the
# 1 GiB file). The load generator streams each body in chunks, as a real
# client does, and shares the machine's cores with the server: the figures
# are this machine's, compare them within one run. All traffic goes to
# 127.0.0.1; every process it starts is stopped, and its temp dir removed,
# on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
read -r -a LEVELS <<<"${UPLOADS_LEVELS-1 10 100}"
COUNT=${UPLOADS_COUNT:-100}
MIB=$((1024 * 1024))
FILE_BYTES=$((${UPLOADS_MIB:-10} * MIB))
BIG_BYTES=$((${UPLOADS_BIG_MIB:-1024} * MIB))
BIG_RUNS=${UPLOADS_BIG_RUNS:-3}
CHUNK=${UPLOADS_CHUNK:-65536}
HIGH=1000000000
# A user's quota well above what one run stores, so no run is refused.
QUOTA=$((64 * 1024 * MIB))
# Run ids in the user ids: a fresh user per run, even against a kept database.
RUN_ID="$(date +%s)-$$"

source bench/lib.sh

log "building release (pantheon, pantheon-loadgen)"
cargo build --release -q -p pantheon-api -p pantheon-loadgen
PANTHEON="$(pwd)/target/release/pantheon"
LOADGEN="$(pwd)/target/release/pantheon-loadgen"
raise_open_files

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-uploads.XXXXXX")
# lib.sh's cleanup_on_exit also drops a PostgreSQL database and a Redis;
# this bench has neither, so its own: the servers, then the temp dir, even
# after a failure (it may hold gigabytes of files; a failed run printed
# its server's log tail), unless BENCH_KEEP is set.
cleanup() {
  local status=$?
  for name in "${!SPID[@]}"; do stop_server "$name"; done
  if [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    log "work directory kept: $WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_env info 5

# Memory of a server, in KiB: its resident set now, and its peak.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/${SPID[$1]}/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/${SPID[$1]}/status"; }
# Writing 5 to clear_refs sets VmHWM back to the current RSS (Linux ≥ 4.0),
# so the peak is the run's, not the start's (migrations, the warm-up). Where
# it is refused the peak is over the server's whole life, which is only
# higher: the table says which.
reset_hwm() { echo 5 >"/proc/${SPID[$1]}/clear_refs" 2>/dev/null; }
ticks() { awk '{ print $14 + $15 }' "/proc/${SPID[$1]}/stat"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
field() { tr ' ' '\n' <"$1" | sed -n "s/^$2=//p" | tail -n 1; }

# The warm-up's files: small, or past a part (the big runs' second half).
WARM_BYTES=$((256 * 1024))
declare -A R_RATE R_P50 R_P99 R_BEFORE R_PEAK R_CPU R_STATUS R_DISK R_RESET R_WALL
# run KEY CONCURRENCY COUNT BYTES [VAR=value ...]: COUNT uploads of BYTES,
# CONCURRENCY at a time, by a fresh user, against a fresh server with the
# extra settings.
run() {
  local key=$1 concurrency=$2 count=$3 bytes=$4 dir="$WORK/$1" t0 t1
  shift 4
  mkdir -p "$dir"
  start_server "$key" PANTHEON__DATABASE__URL="sqlite://$dir/pantheon.db?mode=rwc" \
    PANTHEON__FILES__LOCAL_DIR="$dir/files" \
    PANTHEON__RATE_LIMIT__PER_MINUTE=$HIGH PANTHEON__RATE_LIMIT__PER_HOUR=$HIGH \
    PANTHEON__RATE_LIMIT__UPLOADS_PER_MINUTE=$HIGH \
    PANTHEON__FILES__QUOTA_BYTES=$QUOTA PANTHEON__FILES__MAX_FILES=100000 "$@"
  # A warm-up as another user: the database pool, the store's directory, the
  # code paths and the runtime's threads are in the baseline, not the peak.
  "$LOADGEN" upload --base "${SBASE[$key]}" --user "warm-$RUN_ID-$key" --count 2 --concurrency 2 \
    --bytes "$WARM_BYTES" >"$WORK/$key-warmup.txt" || { cat "$WORK/$key-warmup.txt" >&2; die "$key: the warm-up failed"; }
  sleep 1
  if reset_hwm "$key"; then R_RESET[$key]=yes; else R_RESET[$key]=no; fi
  R_BEFORE[$key]=$(rss_kib "$key")
  t0=$(ticks "$key")
  "$LOADGEN" upload --base "${SBASE[$key]}" --user "up-$RUN_ID-$key" --count "$count" \
    --concurrency "$concurrency" --bytes "$bytes" --chunk-bytes "$CHUNK" >"$WORK/$key.txt" \
    || { cat "$WORK/$key.txt" >&2; tail -n 20 "$WORK/server-$key.log" >&2; die "$key: uploads failed"; }
  t1=$(ticks "$key")
  R_PEAK[$key]=$(hwm_kib "$key")
  R_RATE[$key]=$(field "$WORK/$key.txt" mib_per_s)
  R_WALL[$key]=$(field "$WORK/$key.txt" wall_ms)
  R_P50[$key]=$(field "$WORK/$key.txt" p50_ms)
  R_P99[$key]=$(field "$WORK/$key.txt" p99_ms)
  R_STATUS[$key]=$(field "$WORK/$key.txt" statuses)
  # Server CPU per GiB stored: where a slow path would show.
  R_CPU[$key]=$(awk -v t=$((t1 - t0)) -v b="$((count * bytes))" 'BEGIN { printf "%.2f", t / 100 / (b / 1073741824) }')
  # The bytes on disk, so a throughput is of files really stored (the warm-up's included).
  R_DISK[$key]=$(du -sb "$dir/files" | cut -f1)
  [ "${R_DISK[$key]}" -ge $((count * bytes)) ] || die "$key: ${R_DISK[$key]} bytes on disk, expected at least $((count * bytes))"
  # Warnings and errors the server logged under the load (none expected).
  grep -cE '"level":"(WARN|ERROR)"| (WARN|ERROR) ' "$WORK/server-$key.log" >"$WORK/$key-warnings" || true
  stop_server "$key"
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$dir"
}

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
for c in "${LEVELS[@]}"; do
  log "$COUNT uploads of $((FILE_BYTES / MIB)) MiB, $c at a time"
  run "c$c" "$c" "$COUNT" "$FILE_BYTES"
done
if [ "$BIG_BYTES" -gt 0 ]; then
  # Alternately, so drift in the machine hits both halves alike.
  for r in $(seq 1 "$BIG_RUNS"); do
    log "one upload of $((BIG_BYTES / MIB)) MiB ($r of $BIG_RUNS), on a server warmed with small files"
    # max_file_bytes must be at most quota_bytes.
    WARM_BYTES=$((256 * 1024)) run "big$r" 1 1 "$BIG_BYTES" PANTHEON__FILES__MAX_FILE_BYTES=$((2 * BIG_BYTES))
    log "one upload of $((BIG_BYTES / MIB)) MiB ($r of $BIG_RUNS), on a server warmed with 12 MiB files"
    WARM_BYTES=$((12 * MIB)) run "parts$r" 1 1 "$BIG_BYTES" PANTHEON__FILES__MAX_FILE_BYTES=$((2 * BIG_BYTES))
  done
fi

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes'), $(nproc) cores; \`bench/uploads.sh\`: SQLite + the local files store, text files sent in ${CHUNK}-byte pieces; 1-minute load average ${LOAD_START} before, $(cut -d' ' -f1 /proc/loadavg) after."
echo
echo "| run | files × size | throughput | wall | upload p50 / p99 | server CPU per GiB | RSS before | peak RSS | peak − before | statuses | server warnings |"
echo "|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|"
keys=()
for c in "${LEVELS[@]}"; do keys+=("c$c"); done
if [ "$BIG_BYTES" -gt 0 ]; then
  for r in $(seq 1 "$BIG_RUNS"); do keys+=("big$r"); done
  for r in $(seq 1 "$BIG_RUNS"); do keys+=("parts$r"); done
fi
for key in "${keys[@]}"; do
  if [[ "$key" == big* ]]; then
    label="1 upload (warmed: 2 × 256 KiB), server ${key#big}"; size="1 × $((BIG_BYTES / MIB)) MiB"
  elif [[ "$key" == parts* ]]; then
    label="1 upload (warmed: 2 × 12 MiB), server ${key#parts}"; size="1 × $((BIG_BYTES / MIB)) MiB"
  else
    label="${key#c} at a time"; size="$COUNT × $((FILE_BYTES / MIB)) MiB"
  fi
  peak_note=""
  [ "${R_RESET[$key]}" = yes ] || peak_note=" (life)"
  printf '| %s | %s | %s MiB/s | %s s | %s / %s ms | %s s | %s MiB | %s MiB%s | %s MiB | %s | %s |\n' \
    "$label" "$size" "${R_RATE[$key]}" "$(awk -v w="${R_WALL[$key]}" 'BEGIN { printf "%.2f", w / 1000 }')" \
    "${R_P50[$key]}" "${R_P99[$key]}" "${R_CPU[$key]}" "$(mib "${R_BEFORE[$key]}")" "$(mib "${R_PEAK[$key]}")" \
    "$peak_note" "$(mib $((R_PEAK[$key] - R_BEFORE[$key])))" "${R_STATUS[$key]}" "$(cat "$WORK/$key-warnings")"
done
if [ "$BIG_BYTES" -gt 0 ]; then
  # growths PREFIX: each server's peak − before, in KiB, one a line.
  growths() { for r in $(seq 1 "$BIG_RUNS"); do echo $((R_PEAK[$1$r] - R_BEFORE[$1$r])); done; }
  listed() { growths "$1" | while read -r g; do mib "$g"; echo; done | paste -sd, | sed 's/,/, /g'; }
  growth=$(growths big | sort -n | tail -n 1)
  echo
  verdict=met
  [ "$growth" -le $((32 * 1024)) ] || verdict="**missed**"
  echo "The $((BIG_BYTES / MIB)) MiB upload's peak RSS over the server's RSS before it: at most $(mib "$growth") MiB on the $BIG_RUNS servers warmed with small files ($(listed big) MiB; target ≤ 32 MiB: $verdict); at most $(mib "$(growths parts | sort -n | tail -n 1)") MiB on the $BIG_RUNS warmed past a part ($(listed parts) MiB)."
fi
echo
echo "Throughput: bytes stored ÷ the wall time from the first request to the last answer. Peak RSS: VmHWM, reset to the RSS after a warm-up ((life): not reset, the server's whole life). Server CPU: user + system time of the server process over the run, per GiB stored."
