#!/usr/bin/env bash
# Side by side in one run: this checkout and an older commit, one center
# each in memory, each compared with the bare relay by the same
# `pilot-bench compare` (room of 8, echo over 16 sessions), in rounds whose
# order alternates. Loopback only; bounded by the rounds.
# Usage: benches/compare_ab.sh REV [rounds]      (e.g. benches/compare_ab.sh 6db6d7a 2)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benches/compare_ab.sh REV [rounds]}
rounds=${2:-2}
T=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d /tmp/pilot-compare.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; git worktree remove --force "$dir/old" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
cargo build --release --quiet --bin pilot-center --bin pilot-bench
git worktree add --detach --quiet "$dir/old" "$rev"
(cd "$dir/old" && CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet --bin pilot-center)
for p in 19700 19701; do
  printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: %s\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  state_dir: ""\n' $p >"$dir/c$p.yaml"
done
"$T/release/pilot-center" "$dir/c19700.yaml" --log-level warn >"$dir/new.log" 2>&1 & pids+=($!)
"$dir/target/release/pilot-center" "$dir/c19701.yaml" --log-level warn >"$dir/old.log" 2>&1 & pids+=($!)
sleep 1
for r in $(seq "$rounds"); do
  for s in "fanout 8" "rtt 16"; do
    set -- $s
    order="19700 19701"; (( r % 2 )) || order="19701 19700"
    for port in $order; do
      name=$([ "$port" = 19700 ] && echo "this checkout" || echo "$rev")
      printf 'round %s, %s: ' "$r" "$name"
      "$T/release/pilot-bench" --url "ws://127.0.0.1:$port/pilot/center" compare --scenario "$1" --sessions "$2" --seconds 5 --runs 3 | tail -n 1
    done
  done
done
