#!/usr/bin/env bash
# CPU per delivered item at a fixed load, side by side in one run: this
# checkout, an older commit and the bare relay, in rounds whose order
# alternates. Steadier than a throughput ratio on a shared machine: the
# load is the same for all three, and only the server's CPU is counted
# (utime + stime from /proc over the middle 4 s of each 9 s run).
# - room of 8 at 100,000 messages/s (700 k notifications/s);
# - 50 rooms of 8 at 2,000 messages/s each (700 k notifications/s);
# - echo over 16 sessions, closed loop (the server is then saturated: CPU
#   per echo is its cost per round trip, and the echo rate is printed too).
# Every run checks exactly-once delivery (pilot-bench fails otherwise).
# Loopback only; bounded by the rounds.
# Usage: benches/cpu.sh REV [rounds]   (e.g. benches/cpu.sh 07f1a54 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benches/cpu.sh REV [rounds]}
rounds=${2:-3}
T=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d /tmp/pilot-cpu.XXXXXX)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  git worktree remove --force "$dir/old" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cargo build --release --quiet --bins
git worktree add --detach --quiet "$dir/old" "$rev"
(cd "$dir/old" && CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet --bin pilot-center)
printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 19720\n  connections_per_ip_per_sec: 0\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  state_dir: ""\n' >"$dir/c.yaml"
bench="$T/release/pilot-bench"
url=ws://127.0.0.1:19720/pilot/center
tck=$(getconf CLK_TCK)

ticks() { # pid -> utime + stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

one() { # which scenario -> prints one line
  local which=$1 scenario=$2 args
  case $which in
    new) "$T/release/pilot-center" "$dir/c.yaml" --log-level warn >"$dir/server.log" 2>&1 & server=$! ;;
    old) "$dir/target/release/pilot-center" "$dir/c.yaml" --log-level warn >"$dir/server.log" 2>&1 & server=$! ;;
    relay) "$bench" relay --listen 127.0.0.1:19720 >/dev/null 2>&1 & server=$! ;;
  esac
  sleep 0.5
  case $scenario in
    room8) args=(fanout --sessions 8 --rate 100000 --seconds 9) ;;
    rooms50) args=(fanout --sessions 8 --rooms 50 --rate 2000 --seconds 9) ;;
    echo) args=(rtt --sessions 16 --seconds 9) ;;
  esac
  "$bench" --url $url "${args[@]}" >"$dir/out.txt" 2>&1 &
  local load=$!
  sleep 3
  local before; before=$(ticks "$server")
  sleep 4
  local after; after=$(ticks "$server")
  local ok=0
  wait "$load" && ok=1
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
  local rate
  rate=$(grep -E "notifications delivered|echo requests" "$dir/out.txt" | head -1 | awk '{print $(NF-1)}')
  awk -v w="$which" -v s="$scenario" -v r="$rate" -v b="$before" -v a="$after" -v t="$tck" -v ok="$ok" 'BEGIN {
    cores = (a - b) / t / 4
    printf "%-6s %-8s %9.0f items/s  %.2f cores  %.3f us CPU per item%s\n", w, s, r, cores, (r > 0 ? cores * 1e6 / r : 0), (ok ? "" : "  (RUN FAILED)")
  }'
}

for round in $(seq "$rounds"); do
  order="new old relay"
  [ $((round % 2)) -eq 0 ] && order="relay old new"
  for scenario in room8 rooms50 echo; do
    for which in $order; do
      one "$which" "$scenario"
    done
  done
done
