#!/usr/bin/env bash
# Runs every load scenario against a release build of the center on this
# machine and prints the tables docs/PERFORMANCE.md quotes.
# Loopback only; every run is bounded. Usage: benches/perf.sh [quick]
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bench=target/release/pilot-bench
quick=${1:-}
secs=5; runs=3; rooms=10000; idle=19000; state_rooms=100000
if [[ $quick == quick ]]; then secs=2; runs=1; rooms=1000; idle=2000; state_rooms=2000; fi

start() { # config -> pid of a fresh center
  target/release/pilot-center "$1" --log-level error >"${TMPDIR:-/tmp}/pilot-bench-center.log" 2>&1 & echo $!
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# A failed check prints ERRORS and exits non-zero; keep going, but say so at the end.
failed=0
run() { "$bench" "$@" || { failed=1; echo "!!! pilot-bench $* failed"; }; }
trap 'kill $(jobs -p) 2>/dev/null' EXIT

pid=$(start benches/bench.yaml); sleep 0.5
url=ws://127.0.0.1:19443/pilot/center
echo "### fanout: center vs bare relay (64 sessions, one room)"
run --url $url compare --scenario fanout --sessions 64 --seconds $secs --runs $runs
echo "### rtt: center vs bare relay (16 sessions, closed-loop echo)"
run --url $url compare --scenario rtt --sessions 16 --seconds $secs --runs $runs
echo "### sfu: 16 sessions, $rooms rooms, 4 users per room, flat out, then at about half that rate"
run --url $url --server-pid "$pid" sfu --sessions 16 --rooms $rooms --users-per-room 4
for i in 1 2 3; do run --url $url --server-pid "$pid" sfu --sessions 16 --rooms $rooms --users-per-room 4 --rate 65000; done
echo "### churn"
run --url $url --server-pid "$pid" churn --rate 200 --seconds $secs
echo "### reconnect: an SFU with 10,000 users drops and comes back under its name"
for i in $(seq $runs); do run --url $url --server-pid "$pid" reconnect --rooms 1000 --users 10000; done
stop "$pid"

pid=$(start benches/bench-limits.yaml); sleep 0.5
echo "### storm: 10,000 userReConnect + 10,000 push from one session, default rate limits"
for i in $(seq $runs); do run --url ws://127.0.0.1:19463/pilot/center --server-pid "$pid" storm --rooms 1000 --users 10000; done
stop "$pid"

pid=$(start benches/bench.yaml); sleep 0.5
echo "### idle ws: $idle sessions"
run --url $url --server-pid "$pid" idle --sessions $idle --sources 4 --hold 3
stop "$pid"

pid=$(start benches/bench-tls.yaml); sleep 0.5
echo "### idle wss: $idle sessions"
run --url wss://127.0.0.1:19453/pilot/center --insecure --server-pid "$pid" idle --sessions $idle --sources 4 --hold 3
stop "$pid"

pid=$(start benches/bench.yaml); sleep 0.5
echo "### state: $((state_rooms * 10)) users in $state_rooms rooms over 16 sessions"
run --url $url --server-pid "$pid" sfu --sessions 16 --rooms $state_rooms --users-per-room 10 --join-only --no-msu
stop "$pid"
exit $failed
