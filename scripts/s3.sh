#!/usr/bin/env bash
# A local S3-compatible server for the tests: moto's server (PyPI
# `moto[server]`), from a virtualenv in the cache directory that is
# installed the first time only. It starts empty: each test creates its
# own bucket. Any credentials are accepted.
#
#   scripts/s3.sh start DIR    # starts it in DIR (log, pid), prints its endpoint http://127.0.0.1:PORT
#   scripts/s3.sh stop DIR     # stops the server started in DIR, removes DIR
#   scripts/s3.sh check URL    # exit 0 when an S3 server answers at URL
#
# Environment: PANTHEON_MOTO_VENV (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/pantheon/moto). Needs python3 with venv.
set -euo pipefail

log() { printf 's3: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

VENV=${PANTHEON_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pantheon/moto}

# in_use PORT: something listens on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    if ! in_use "$port"; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# answers URL: an S3 server lists its buckets there.
answers() { curl -fsS -o /dev/null --max-time 2 "$1/" 2>/dev/null; }

# ensure_moto: the virtualenv with moto_server, installed when missing
# (under a lock: test runs may start at once).
ensure_moto() {
  [ -x "$VENV/bin/moto_server" ] && return
  command -v python3 >/dev/null || die "python3 is needed"
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if [ ! -x "$VENV/bin/moto_server" ]; then
    log "installing moto[server] into $VENV"
    python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (is python3-venv installed?)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' >&2 \
      || die "pip install 'moto[server]' failed"
  fi
  exec 9>&-
}

start() {
  ensure_moto
  mkdir -p "$DIR"
  local port pid attempt
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    # Its own session and no terminal output: the caller's $(…) returns
    # once the URL is printed, and the caller's Ctrl-C is its trap's job.
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$DIR/moto.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/moto.pid"
    for _ in $(seq 1 300); do
      if answers "http://127.0.0.1:$port"; then
        echo "http://127.0.0.1:$port"
        return
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    log "moto_server on $port did not start (attempt $attempt):"
    tail -n 5 "$DIR/moto.log" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  die "moto_server could not be started"
}

stop() {
  [ -d "$DIR" ] || return 0
  if [ -f "$DIR/moto.pid" ]; then
    local pid
    pid=$(cat "$DIR/moto.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) DIR=${2:?usage: $0 start DIR}; start ;;
  stop) DIR=${2:?usage: $0 stop DIR}; stop ;;
  check) answers "${2:?usage: $0 check URL}" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
