#!/usr/bin/env bash
# Where a query's CPU goes, portvakt beside Unbound: each server pinned to CPU 0 in a private
# network namespace, dnsperf on CPU 1 sending blocked names from 127.0.0.2 at a fixed rate.
# Per answered query: user and kernel instructions (`perf stat`, repeatable), then a
# `perf record -g` profile split into user code, syscalls and softirq.
#
#   cargo build --release && benches/profile.sh [qps] [seconds]
#
# Needs root, linux-perf, dnsperf, unbound and the data of ../shared/bench/gen-data.sh.
set -euo pipefail
QPS=${1:-50000}
SECS=${2:-8}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$HERE/../shared/bench}
DATA=${BENCH_WORK:-/tmp/portvakt-bench}/data
if [[ ${PORTVAKT_PROFILE_NETNS:-} != 1 ]]; then
  [[ -f $DATA/queries/blocked.txt ]] || "$BENCH/gen-data.sh" >&2
  exec env PORTVAKT_PROFILE_NETNS=1 unshare --net "$0" "$@"
fi
ip link set lo up
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$RUN"' EXIT

sed -e "s#@GW_PORT@#5353#g; s#@UP_PORT@#5300#g; s#@BLOCKLIST@#$DATA/blocklist.txt#g" \
  "$BENCH/configs/portvakt.toml.tmpl" > "$RUN/portvakt.toml"
sed -e "s#@GW_PORT@#5353#g; s#@UP_PORT@#5300#g; s#@RUN@#$RUN#g; s#@DATA@#$DATA#g; s#@THREADS@#1#g; s#@SLABS@#1#g" \
  -e "s#@BLOCKLIST@#$DATA/blocklist.txt#g; s#@BLOCKCONF@#$DATA/unbound-block.conf#g" \
  "$BENCH/configs/unbound.conf.tmpl" > "$RUN/unbound.conf"

start() {
  if [[ $1 == portvakt ]]; then
    taskset -c 0 "$HERE/target/release/portvakt" serve --config "$RUN/portvakt.toml" --log-level warn > "$RUN/out" 2>&1 &
  else
    taskset -c 0 unbound -d -c "$RUN/unbound.conf" > "$RUN/out" 2>&1 &
  fi
  PID=$!
  for _ in $(seq 1 50); do
    dig +tries=1 +time=1 -b 127.0.0.2 @127.0.0.1 -p 5353 tiktok.com | grep -q NXDOMAIN && return; sleep 0.1
  done
  echo "$1 did not answer" >&2; exit 1
}
load() { # seconds of load in the background; sets DP
  taskset -c 1 dnsperf -s 127.0.0.1 -p 5353 -a 127.0.0.2 -d "$DATA/queries/blocked.txt" \
    -c 10 -q 200 -Q "$QPS" -l "$1" > "$RUN/dp.out" 2>&1 &
  DP=$!
}
completed() { awk '/Queries completed/ { print $3 }' "$RUN/dp.out"; }

for peer in ${PEERS:-portvakt unbound}; do
  start "$peer"
  # Counting: the middle SECS seconds of a SECS+4 s run; queries counted over the same window.
  load $(( SECS + 4 )); sleep 2
  perf stat -x, -e instructions:u,instructions:k -p "$PID" -o "$RUN/stat" -- sleep "$SECS"
  wait "$DP"
  if grep -q "not supported" "$RUN/stat"; then
    echo "$peer: this CPU has no hardware counters for perf; count with benches/callgrind.sh" >&2
  fi
  per_q=$(( QPS * SECS ))
  awk -F, -v p="$peer" -v n="$per_q" '/instructions/ { split($3, e, ":"); v[e[2]] = $1 }
    END { printf "%-8s instructions per query: user %.0f, kernel %.0f (at %d qps)\n", p, v["u"]/n, v["k"]/n, n/'"$SECS"' }' "$RUN/stat"
  # Sampling: where the cycles go.
  load $(( SECS + 4 )); sleep 2
  perf record -q -F 2999 -g -p "$PID" -o "$RUN/perf.data" -- sleep "$SECS" 2>/dev/null
  wait "$DP"
  report() { perf report -i "$RUN/perf.data" --no-children --sort "$1" -g none 2>/dev/null | grep '%' ; }
  user=$(report dso | awk '!/kernel/ { s += $1 } END { printf "%.0f", s }')
  calls=$(perf report -i "$RUN/perf.data" --children --sort sym -g none 2>/dev/null |
    awk '$NF ~ /^(__x64_sys_sendto|__x64_sys_recvfrom|__x64_sys_epoll_wait|handle_softirqs)$/ { printf "%s %s, ", $NF, $1 }')
  echo "$peer  cycles: user code ${user}%, kernel: ${calls%, } (softirq: the reply's delivery to the client, inside sendto)"
  report sym | grep -v "\[k\]" | head -${TOP:-8} | sed "s/^/$peer    /"
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
