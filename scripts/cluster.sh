#!/usr/bin/env bash
# A local Redis Cluster for the tests and benchmarks: 3 masters and 3
# replicas, each a `redis-server --cluster-enabled yes` on a free loopback
# port (its cluster bus on port + 10000), joined by
# `redis-cli --cluster create … --cluster-replicas 1`. No persistence; a
# short cluster-node-timeout, and `cluster-require-full-coverage no` so a
# failed master stops only its own slots, not the whole cluster.
#
#   scripts/cluster.sh start DIR    # starts it in DIR, prints the seed URLs (comma-separated)
#   scripts/cluster.sh stop DIR     # stops every node started in DIR, removes DIR
#   scripts/cluster.sh check URLS   # exit 0 when the cluster at URLS answers cluster_state:ok
#
# Environment: CLUSTER_NODE_TIMEOUT_MS (default 2000), CLUSTER_MASTERS (3).
# Installs redis-server with apt-get when missing (scripts/services.sh
# does, and is run first by scripts/test.sh).
set -euo pipefail

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

NODE_TIMEOUT=${CLUSTER_NODE_TIMEOUT_MS:-2000}
MASTERS=${CLUSTER_MASTERS:-3}
NODES=$((MASTERS * 2))

# in_use PORT: something listens on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a port that is free, and so is its cluster bus port (+10000).
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 35000))
    if ! in_use "$port" && ! in_use $((port + 10000)) && ! grep -qx "$port" "$DIR/ports" 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

node_up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }

# cluster_ok PORT: the node sees every slot served, every node joined and
# every replica attached to its master.
cluster_ok() {
  local info replicas
  info=$(redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r') || return 1
  replicas=$(redis-cli -p "$1" cluster nodes 2>/dev/null | grep -cE ' (myself,)?slave ' || true)
  grep -qx 'cluster_state:ok' <<<"$info" \
    && grep -qx 'cluster_slots_ok:16384' <<<"$info" \
    && grep -qx "cluster_known_nodes:$NODES" <<<"$info" \
    && [ "$replicas" = "$MASTERS" ]
}

# launch_node: starts one node on a free port (another, when the port was
# taken before it could bind) and prints the port once it answers PING.
launch_node() {
  local port attempt
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    echo "$port" >>"$DIR/ports"
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file "$DIR/nodes-$port.conf" \
      --cluster-node-timeout "$NODE_TIMEOUT" --cluster-require-full-coverage no \
      --daemonize yes --pidfile "$DIR/redis-$port.pid" --dir "$DIR" --logfile "$DIR/redis-$port.log"
    for _ in $(seq 1 300); do
      if node_up "$port"; then
        echo "$port"
        return
      fi
      # Gone without answering: the port was taken; try another.
      grep -q 'Could not create server TCP listening socket' "$DIR/redis-$port.log" 2>/dev/null && break
      sleep 0.05
    done
    log "redis-server on $port did not start (attempt $attempt):"
    tail -n 5 "$DIR/redis-$port.log" >&2 || true
    [ -f "$DIR/redis-$port.pid" ] && kill -KILL "$(cat "$DIR/redis-$port.pid")" 2>/dev/null || true
  done
  die "no node could be started"
}

start() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli are needed"
  mkdir -p "$DIR"
  : >"$DIR/ports"
  local port ports addresses=()
  for _ in $(seq 1 "$NODES"); do
    port=$(launch_node)
    ports+=("$port")
    addresses+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 \
    || { cat "$DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
  for port in "${ports[@]}"; do
    for _ in $(seq 1 600); do cluster_ok "$port" && break; sleep 0.05; done
    cluster_ok "$port" || die "node $port does not see the cluster as ok"
  done
  local urls=()
  for port in "${ports[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  (IFS=,; echo "${urls[*]}")
}

stop() {
  [ -d "$DIR" ] || return 0
  local pidfile pid
  for pidfile in "$DIR"/redis-*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
}

check() {
  local url port
  IFS=, read -ra urls <<<"$1"
  for url in "${urls[@]}"; do
    port=${url##*:}
    port=${port%%/*}
    redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' && return 0
  done
  return 1
}

case "${1:-}" in
  start) DIR=${2:?usage: $0 start DIR}; start ;;
  stop) DIR=${2:?usage: $0 stop DIR}; stop ;;
  check) check "${2:?usage: $0 check URLS}" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
