#!/usr/bin/env bash
# Side by side in one run: this checkout against an older commit, one center
# each in memory, the same load tool against each in turn, in rounds whose
# order alternates (a machine warming or cooling favours neither).
# - sfu (default): `pilot-bench sfu` flat out; prints each round and the medians.
# - relay: `pilot-bench compare` of each center with the bare relay (room of
#   8, echo over 16 sessions, 50 rooms of 8); prints each comparison, with how many cores
#   the relay, the center and the load tool kept busy.
# Loopback only; bounded by the rounds.
# Usage: benches/ab.sh REV [rounds] [sfu|relay]   (e.g. benches/ab.sh f9e8667 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benches/ab.sh REV [rounds] [sfu|relay]}
rounds=${2:-5}
what=${3:-sfu}
T=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d /tmp/pilot-ab.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; git worktree remove --force "$dir/old" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
cargo build --release --quiet --bins
git worktree add --detach --quiet "$dir/old" "$rev"
(cd "$dir/old" && CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet --bin pilot-center)
for p in 19700 19701; do
  printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: %s\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  reconnect_grace_secs: 30\n  state_dir: ""\n' $p >"$dir/c$p.yaml"
done
"$T/release/pilot-center" "$dir/c19700.yaml" --log-level warn >"$dir/new.log" 2>&1 & pids+=($!)
"$dir/target/release/pilot-center" "$dir/c19701.yaml" --log-level warn >"$dir/old.log" 2>&1 & pids+=($!)
sleep 1
if [ "$what" = relay ]; then
  for r in $(seq "$rounds"); do
    for s in "fanout 8 1" "rtt 16 1" "fanout 8 50"; do
      set -- $s
      order="19700 19701"; (( r % 2 )) || order="19701 19700"
      for port in $order; do
        name=$([ "$port" = 19700 ] && echo "this checkout" || echo "$rev")
        pid=$([ "$port" = 19700 ] && echo "${pids[0]}" || echo "${pids[1]}")
        printf 'round %s, %s, %s %s x %s: ' "$r" "$name" "$1" "$2" "$3"
        "$T/release/pilot-bench" --url "ws://127.0.0.1:$port/pilot/center" --server-pid "$pid" compare --scenario "$1" --sessions "$2" --rooms "$3" --seconds 5 --runs 3 | tail -n 2
      done
    done
  done
  exit 0
fi
figure() { sed -n -E 's/.*protoo messages \(in \+ out\) *([0-9]+).*/\1/p'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
new=(); old=()
for r in $(seq "$rounds"); do
  run() { "$T/release/pilot-bench" --url "ws://127.0.0.1:$1/pilot/center" sfu --sessions 16 --rooms 10000 --users-per-room 4 | figure; }
  # Who goes first alternates: a machine warming or cooling favours neither.
  if (( r % 2 )); then n=$(run 19700); o=$(run 19701); else o=$(run 19701); n=$(run 19700); fi
  new+=("$n"); old+=("$o")
  echo "round $r: this checkout $n msgs/s, $rev $o msgs/s, ratio $(awk -v a="$n" -v b="$o" 'BEGIN {printf "%.2f", a / b}')"
done
mn=$(printf '%s\n' "${new[@]}" | median); mo=$(printf '%s\n' "${old[@]}" | median)
echo "medians: this checkout $mn msgs/s, $rev $mo msgs/s, ratio $(awk -v a="$mn" -v b="$mo" 'BEGIN {printf "%.2f", a / b}')"
