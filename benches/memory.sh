#!/usr/bin/env bash
# Memory after a crowd (issue 11, item 8): a center on wss, 5,000 sessions
# join and hold 3 s, then close; RSS (anonymous / file pages) before, at the
# peak and 30 s after the users left. "cold" is the idle center as started,
# "warm" the idle center after its first 10 sessions came and went (the code
# they ran is mapped by then: file pages that never go back to "cold").
# Usage: benches/memory.sh [rounds] [reconnect_grace_secs]   (loopback only)
# BIN_DIR=dir uses the binaries in dir/release instead of building (to
# compare builds, e.g. allocators, side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
grace=${2:-0}
T=${BIN_DIR:-${CARGO_TARGET_DIR:-target}}
port=19460
dir=$(mktemp -d /tmp/pilot-memory.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
[ -n "${BIN_DIR:-}" ] || cargo build --release --quiet --bins
printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: %s\n  self_signed: true\n  connections_per_ip_per_sec: 0\n  max_pending_handshakes_per_ip: 0\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  reconnect_grace_secs: %s\n' "$port" "$grace" >"$dir/center.yaml"
url="wss://127.0.0.1:$port/pilot/center"
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
show() { echo "$(( $(kib "$1" VmRSS) / 1024 )).$(( $(kib "$1" VmRSS) % 1024 * 10 / 1024 )) MB (anon $(kib "$1" RssAnon) KiB, file $(kib "$1" RssFile) KiB)"; }
for r in $(seq "$rounds"); do
  "$T/release/pilot-center" "$dir/center.yaml" --log-level info >"$dir/center.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do ss -ltn | grep -q ":$port " && break; sleep 0.1; done
  sleep 1
  cold=$(kib "$pid" VmRSS); cold_s=$(show "$pid")
  "$T/release/pilot-bench" --insecure --url "$url" idle --sessions 10 --sources 1 --hold 1 >/dev/null
  sleep 3
  warm=$(kib "$pid" VmRSS); warm_s=$(show "$pid")
  "$T/release/pilot-bench" --insecure --url "$url" idle --sessions 5000 --sources 4 --hold 3 >"$dir/bench.txt"
  peak=$(kib "$pid" VmHWM)
  sleep $((grace + 30))
  after=$(kib "$pid" VmRSS); after_s=$(show "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "round $r: cold $cold_s; warm $warm_s; peak $((peak / 1024)) MB; 30 s after the users left $after_s;" \
    "over warm $(awk -v a="$after" -v b="$warm" 'BEGIN {printf "%+.0f%%", (a / b - 1) * 100}')," \
    "over cold $(awk -v a="$after" -v b="$cold" 'BEGIN {printf "%+.0f%%", (a / b - 1) * 100}')"
done
