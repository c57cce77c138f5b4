#!/usr/bin/env bash
# Side by side on this machine (issue 12): one center in memory, one node on
# Redis, three nodes on Redis; `sfu` and `fanout` in alternating rounds
# (medians), then the three-node cluster at about half the in-memory `sfu`
# rate for its p99, Redis commands per operation, and the failover time
# (a node killed with SIGKILL -> every pull of its SFU's users routes again).
# Loopback only; every run is bounded. Usage: benches/cluster.sh [rounds]
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
T=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
bench=$T/release/pilot-bench
center=$T/release/pilot-center
dir=$(mktemp -d /tmp/pilot-cluster-bench.XXXXXX)
rport=16390
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p $rport ping >/dev/null 2>&1 && break; sleep 0.1; done

node() { # name port cluster(0|1) ttl -> starts a center, prints its pid
  local cluster=""
  [[ $3 == 1 ]] && cluster=$(printf 'cluster:\n  redis_url: "redis://127.0.0.1:%s/0"\n  node_id: %s\n  node_ttl_secs: %s\n  key_prefix: %s\n' $rport "$1" "${4:-10}" "${5:-pilot}")
  printf 'websocket:\n  listen_ip: 127.0.0.1\n  listen_port: %s\n  connections_per_ip_per_sec: 0\n  max_pending_handshakes_per_ip: 0\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\nlimits:\n  messages_per_sec: 0\ncenter:\n  reconnect_grace_secs: 30\n%s\n' "$2" "$cluster" >"$dir/$1.yaml"
  "$center" "$dir/$1.yaml" --log-level warn >"$dir/$1.log" 2>&1 &
  echo $!
}
url() { echo "ws://127.0.0.1:$1/pilot/center"; }
figure() { sed -n -E 's/.*(protoo messages \(in \+ out\)|notifications delivered) *([0-9]+).*/\2/p'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

pids+=("$(node mem 19600 0)")
pids+=("$(node r1 19610 1 10 one)")
for i in 1 2 3; do pids+=("$(node "r3-$i" $((19620 + i)) 1 10 three)"); done
sleep 1
declare -A sfu fanout
targets=(mem r1 r3)
urls_of() {
  case $1 in
    mem) echo "--url $(url 19600)" ;;
    r1) echo "--url $(url 19610)" ;;
    r3) echo "--url $(url 19621) --url $(url 19622) --url $(url 19623)" ;;
  esac
}
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2046
    s=$("$bench" $(urls_of $t) sfu --sessions 16 --rooms 10000 --users-per-room 4 | tee -a "$dir/sfu-$t.txt" | figure)
    # shellcheck disable=SC2046
    f=$("$bench" $(urls_of $t) fanout --sessions 64 --seconds 5 | tee -a "$dir/fanout-$t.txt" | figure)
    sfu[$t]+="$s "; fanout[$t]+="$f "
    echo "round $r $t: sfu $s msgs/s, fanout $f msgs/s"
  done
done
echo
echo "### medians of $rounds rounds (sfu: protoo messages in + out per second; fanout: notifications delivered per second)"
m=$(echo ${sfu[mem]} | tr ' ' '\n' | median)
for t in "${targets[@]}"; do
  s=$(echo ${sfu[$t]} | tr ' ' '\n' | median); f=$(echo ${fanout[$t]} | tr ' ' '\n' | median)
  printf '%-4s sfu %8s  (x%.2f of memory)   fanout %8s\n' "$t" "$s" "$(echo "$s / $m" | bc -l)" "$f"
done

r3=$(echo ${sfu[r3]} | tr ' ' '\n' | median)
# `--rate` counts operations; an operation is about four messages here.
half_r3=$(( r3 / 2 / 4 )); half_mem=$(( m / 2 / 4 ))
echo
echo "### three nodes on Redis at about half their own sfu rate (--rate $half_r3 ops/s): the target"
redis-cli -p $rport config resetstat >/dev/null
# shellcheck disable=SC2046
"$bench" $(urls_of r3) sfu --sessions 16 --rooms 10000 --users-per-room 4 --rate $half_r3 | tee "$dir/half.txt" | sed -n '/latency/,/correctness/p'
echo "operations: $(sed -n -E 's/^ *operations +([0-9]+).*/\1/p' "$dir/half.txt") per second; redis command calls during that run:"
redis-cli -p $rport info commandstats | grep -E 'cmdstat_(xadd|xread|set|exists)' | sed 's/,usec_per_call.*//'
for spec in "r1 $half_mem" "r3 $half_mem"; do
  set -- $spec
  echo
  echo "### $1 at about half the in-memory sfu rate (--rate $2 ops/s)"
  # shellcheck disable=SC2046
  "$bench" $(urls_of $1) sfu --sessions 16 --rooms 10000 --users-per-room 4 --rate $2 | sed -n -E '/latency/,/correctness/p; s/^ *(operations +[0-9]+).*/\1 per second/p'
done

echo
echo "### failover: a node killed (SIGKILL) under an SFU with 10,000 users; the SFU reconnects at once to another node under its name"
for ttl in 10 2; do
  p=$((19700 + 2 * ttl))   # fresh ports: a killed node's port may linger
  victim=$(node "fo-$ttl-1" $p 1 $ttl "failover-$ttl"); pids+=("$victim" "$(node "fo-$ttl-2" $((p + 1)) 1 $ttl "failover-$ttl")")
  sleep 1
  echo "node_ttl_secs: $ttl"
  "$bench" --url "$(url $p)" --url "$(url $((p + 1)))" reconnect --rooms 1000 --users 10000 --kill "$victim" | grep -E 'node killed|correctness|ERROR'
done
