#!/usr/bin/env bash
# The three stores side by side on this machine (issue 20): one center in
# memory, on a state directory (fsync batch, always, never) and on one Redis
# node; `pilot-bench sfu` (joins, pushes, pulls: every message a change)
# and `pilot-bench fanout` (a room of 8 chatting: texts change no state)
# against each in alternating rounds, medians and ratios to memory, and
# what each state directory holds at the end. Loopback only; every run is
# bounded.
# Usage: benches/store.sh [rounds]
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
T=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
bench=$T/release/pilot-bench
center=$T/release/pilot-center
dir=$(mktemp -d /tmp/pilot-store-bench.XXXXXX)
rport=16391
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p $rport ping >/dev/null 2>&1 && break; sleep 0.1; done

node() { # name port extra-center-keys extra-sections -> starts a center, prints its pid
  printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: %s\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  reconnect_grace_secs: 30\n%s\n%s\n' "$2" "$3" "$4" >"$dir/$1.yaml"
  "$center" "$dir/$1.yaml" --log-level warn >"$dir/$1.log" 2>&1 &
  echo $!
}
figure() { sed -n -E 's/.*protoo messages \(in \+ out\) *([0-9]+).*/\1/p'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

pids+=("$(node memory 19800 '  state_dir: ""' '')")
pids+=("$(node batch 19801 "  state_dir: $dir/batch
  fsync: batch" '')")
pids+=("$(node always 19802 "  state_dir: $dir/always
  fsync: always" '')")
pids+=("$(node never 19803 "  state_dir: $dir/never
  fsync: never" '')")
pids+=("$(node redis 19804 '' "cluster:
  redis_url: redis://127.0.0.1:$rport/0")")
sleep 1
declare -A port=([memory]=19800 [batch]=19801 [always]=19802 [never]=19803 [redis]=19804)
targets=(memory batch never always redis)
fanfig() { sed -n -E 's/.*notifications delivered *([0-9]+).*/\1/p'; }
declare -A sfu fan
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    s=$("$bench" --url "ws://127.0.0.1:${port[$t]}/pilot/center" sfu --sessions 16 --rooms 10000 --users-per-room 4 | tee -a "$dir/sfu-$t.txt" | figure)
    f=$("$bench" --url "ws://127.0.0.1:${port[$t]}/pilot/center" fanout --sessions 8 --seconds 5 | tee -a "$dir/fan-$t.txt" | fanfig)
    sfu[$t]+="$s "
    fan[$t]+="$f "
    echo "round $r $t: sfu $s msgs/s, fanout $f notifications/s"
  done
done
echo
echo "### medians of $rounds rounds (sfu: protoo messages in + out per second; fanout: notifications delivered per second)"
m=$(echo ${sfu[memory]} | tr ' ' '\n' | median)
mf=$(echo ${fan[memory]} | tr ' ' '\n' | median)
for t in "${targets[@]}"; do
  s=$(echo ${sfu[$t]} | tr ' ' '\n' | median)
  f=$(echo ${fan[$t]} | tr ' ' '\n' | median)
  printf '%-7s sfu %8s  (%.0f %% of memory)   fanout %8s  (%.0f %% of memory)\n' "$t" "$s" "$(echo "100 * $s / $m" | bc -l)" "$f" "$(echo "100 * $f / $mf" | bc -l)"
done
du -sh "$dir/batch" "$dir/always" "$dir/never" 2>/dev/null
