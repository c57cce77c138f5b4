#!/usr/bin/env bash
# Builds side by side in one run (e.g. allocators): one center per build, in
# memory, on its own port; each round runs `pilot-bench sfu` flat out and at
# 35,000 ops/s against each build in turn (who goes first rotates). Prints
# every round, then per build the median msgs/s and the median p99 (ms) of
# each kind at 35,000 ops/s. Loopback only; bounded by the rounds.
# Usage: benches/builds.sh ROUNDS NAME=BIN_DIR[@MALLOC_CONF] ...
#   BIN_DIR holds release/pilot-center; MALLOC_CONF goes to jemalloc builds
#   as _RJEM_MALLOC_CONF. The bench client is this checkout's pilot-bench.
#   e.g. benches/builds.sh 5 glibc=/tmp/a jemalloc=/tmp/b
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?usage: benches/builds.sh ROUNDS NAME=BIN_DIR[@MALLOC_CONF] ...}
shift
T=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d /tmp/pilot-builds.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
cargo build --release --quiet --bin pilot-bench
names=(); port=19800
for spec in "$@"; do
  name=${spec%%=*}; rest=${spec#*=}; bin=${rest%%@*}; conf=""
  [[ $rest == *@* ]] && conf=${rest#*@}
  printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: %s\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  state_dir: ""\n  reconnect_grace_secs: 30\n' $port >"$dir/$name.yaml"
  _RJEM_MALLOC_CONF=$conf "$bin/release/pilot-center" "$dir/$name.yaml" --log-level warn >"$dir/$name.log" 2>&1 & pids+=($!)
  echo "$port" >"$dir/$name.port"; names+=("$name"); port=$((port + 1))
done
sleep 1
bench() { "$T/release/pilot-bench" --url "ws://127.0.0.1:$(cat "$dir/$1.port")/pilot/center" sfu --sessions 16 --rooms 10000 --users-per-room 4 --json "${@:2}"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n=${#names[@]}
for r in $(seq "$rounds"); do
  for i in $(seq 0 $((n - 1))); do
    name=${names[$(( (i + r) % n ))]}
    bench "$name" | jq -r '.[0].throughput[] | select(.[0] | startswith("protoo")) | .[1] | floor' >>"$dir/$name.flat"
    bench "$name" --rate 35000 | jq -c '[.[0].latency[] | {(.kind): .p99_ms}] | add' >>"$dir/$name.p99"
    echo "round $r $name: $(tail -1 "$dir/$name.flat") msgs/s; p99 at 35,000 ops/s $(tail -1 "$dir/$name.p99")"
  done
done
for name in "${names[@]}"; do
  p99=$(jq -rs '. as $all | [($all[0] | keys_unsorted[]) as $k | "\($k) \([$all[][$k]] | sort | .[((length - 1) / 2) | floor])"] | join(" · ")' "$dir/$name.p99")
  echo "median $name: $(median <"$dir/$name.flat") msgs/s; p99 (ms) at 35,000 ops/s: $p99"
done
