# Helpers shared by bench/run.sh and bench/compare.sh (sourced, not run):
# starting and stopping Pantheon servers on free loopback ports, the
# bench's own redis-servers, and the admin connection to PostgreSQL.
# The caller sets WORK (a scratch directory), LOADGEN and PANTHEON (built
# binaries) before using them.

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

declare -A SPID SBASE

# 2,000 streams need 2,000 sockets in the load generator and as many in the
# server (both inherit this limit), plus the database pool.
raise_open_files() {
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
  [ "$(ulimit -n)" -ge 8192 ] || die "ulimit -n is $(ulimit -n); the SSE scenario needs at least 8192"
}

# bench_env LOG_LEVEL GRACE_SECS: what every bench server inherits. The
# load generator mints and the servers verify with this secret; settings
# from the caller's environment that would point them elsewhere are cleared.
bench_env() {
  export PANTHEON__AUTH__JWT_SECRET="pantheon-bench-secret-0123456789abcdef-0123456789"
  export PANTHEON__LOG__LEVEL="$1" PANTHEON__SERVER__SHUTDOWN_GRACE_SECS="$2"
  unset PANTHEON__DATABASE__URL PANTHEON__REDIS__URL PANTHEON__REDIS__CLUSTER_URLS DATABASE_URL PGSSLMODE
}

# stop_server NAME
stop_server() {
  local pid=${SPID[$1]:-}
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  unset "SPID[$1]"
}

# stop_redis NAME: a bench redis-server, by its pidfile.
stop_redis() {
  local pidfile="$WORK/redis-$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# start_redis NAME: prints the port.
start_redis() {
  local port
  port=$("$LOADGEN" free-port)
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --daemonize yes --pidfile "$WORK/redis-$1.pid" --dir "$WORK" --logfile "$WORK/redis-$1.log"
  for _ in $(seq 1 50); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG || die "the bench Redis $1 did not start"
  echo "$port"
}

# merged_quantile FILE Q: the Q-quantile (0–1) of all rounds of FILE
# together, in µs: each round's QUANTILES points (bench/wrk/quantiles.lua),
# weighted by the share of that round's requests they stand for, form one
# distribution.
merged_quantile() {
  awk '/^RESULT / { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "requests") req = kv[2] } }
       /^QUANTILES / { prev = 0
         for (i = 2; i <= NF; i++) { split($i, pv, ":"); print pv[2], (pv[1] - prev) / 100 * req; prev = pv[1] } }' "$1" \
    | sort -g \
    | awk -v q="$2" '{ v[NR] = $1; m[NR] = $2; t += $2 }
        END { for (i = 1; i <= NR; i++) { c += m[i]; if (c >= q * t * (1 - 1e-9)) { print v[i]; exit } } }'
}

psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

# start_server NAME [VAR=value ...]: a fresh Pantheon on a free port,
# reachable at ${SBASE[NAME]}.
start_server() {
  start_build "$1" "$PANTHEON" "${@:2}"
}

# start_build NAME BINARY [VAR=value ...]: the same, of a given build.
# START_WRAP (an array, default none) runs the binary under a command
# (valgrind); START_TRIES (default 150) is how many tenths of a second it
# gets to answer /healthz.
start_build() {
  local name=$1 binary=$2 port pid
  shift 2
  port=$("$LOADGEN" free-port)
  # A build with a metrics listener (server.metrics_addr, default
  # 127.0.0.1:9464) gets a free port for it, so servers side by side do not
  # collide; older builds refuse the key, so only a binary that names it
  # gets it.
  local extra=()
  if grep -qa 'server.metrics_addr' "$binary"; then
    extra=(PANTHEON__SERVER__METRICS_ADDR="127.0.0.1:$("$LOADGEN" free-port)")
  fi
  # A build with files keeps their bytes in files.local_dir, which on
  # PostgreSQL defaults to ./pantheon-files, created at start: in the
  # repository. The bench's servers share $WORK/files instead (servers on
  # one database must share its files); a caller's own setting comes after
  # and wins. Only a build that names the key gets it, as above.
  if grep -qa 'files.local_dir' "$binary"; then
    extra+=(PANTHEON__FILES__LOCAL_DIR="$WORK/files")
  fi
  env PANTHEON__SERVER__ADDR="127.0.0.1:$port" PANTHEON__PROVIDER__KIND=builtin \
    "${extra[@]}" "$@" ${START_WRAP[@]+"${START_WRAP[@]}"} "$binary" >"$WORK/server-$name.log" 2>&1 &
  pid=$!
  SPID[$name]=$pid
  SBASE[$name]="http://127.0.0.1:$port"
  for _ in $(seq 1 "${START_TRIES:-150}"); do
    curl -sf "${SBASE[$name]}/healthz" >/dev/null 2>&1 && return
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$WORK/server-$name.log" >&2
  die "server $name did not start"
}

# cleanup_on_exit REDIS_NAME: on exit (or INT/TERM), stop every server
# started, the bench Redis REDIS_NAME, drop the database $DB and remove
# $WORK, keeping the exit status.
cleanup_on_exit() {
  BENCH_REDIS=$1
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}
bench_cleanup() {
  local status=$?
  for name in "${!SPID[@]}"; do stop_server "$name"; done
  stop_redis "$BENCH_REDIS"
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$status"
}
