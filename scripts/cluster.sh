#!/usr/bin/env bash
# Starts a local cluster: one redis-server (append-only file on) and three
# centers sharing it (docs/CLUSTER.md, README "Cluster"). Ctrl-C stops all.
#
#   scripts/cluster.sh            # wss on 127.0.0.1:9501..9503, gRPC 9511..9513, admin 9521..9523
#   REDIS_PORT=6390 NODES=5 scripts/cluster.sh
#
# Put the WebSocket ports behind a TCP load balancer (or one DNS name) for
# SFUs; any node's gRPC or admin port shows and acts on the whole cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-6390}
NODES=${NODES:-3}
DIR=${DIR:-$(mktemp -d /tmp/pilot-cluster.XXXXXX)}
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }
cargo build --release --quiet --bin pilot-center

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; echo "stopped; logs in $DIR"' EXIT INT TERM
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync everysec --dir "$DIR" --save "" \
  >"$DIR/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

for n in $(seq "$NODES"); do
  cat >"$DIR/node$n.yaml" <<YAML
websocket:
  listen_ip: 127.0.0.1
  listen_port: $((9500 + n))
  self_signed: true   # wss: the RTCPilot SFU only speaks TLS
grpc:
  listen_ip: 127.0.0.1
  listen_port: $((9510 + n))
admin:
  listen_ip: 127.0.0.1
  listen_port: $((9520 + n))
cluster:
  redis_url: "redis://127.0.0.1:$REDIS_PORT/0"
  node_id: node$n
YAML
  target/release/pilot-center "$DIR/node$n.yaml" >"$DIR/node$n.log" 2>&1 &
  pids+=($!)
  echo "node$n: ws://127.0.0.1:$((9500 + n))/pilot/center  grpc 127.0.0.1:$((9510 + n))  admin http://127.0.0.1:$((9520 + n))/"
done
echo "redis: 127.0.0.1:$REDIS_PORT (append-only file in $DIR)"
wait
