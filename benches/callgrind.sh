#!/usr/bin/env bash
# User-space instructions per blocked query where the CPU has no hardware counters for
# `benches/profile.sh` (VMs without a PMU): each build runs under callgrind in a private network
# namespace, and dnsperf sends the blocked names from 127.0.0.2 once and then three times;
# the difference in instructions over the difference in answered queries cancels start-up
# and shutdown. Deterministic to well under 1 %, so two builds compare at a glance.
#
#   cargo build --release && benches/callgrind.sh [BINARY...]   (default target/release/portvakt)
#   EXTRA_CONFIG=$'[rate_limit]\nqps = 100000000' benches/callgrind.sh   (TOML appended to the config)
#
# Needs root, valgrind, dnsperf, dig and the data of ../shared/bench/gen-data.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$HERE/../shared/bench}
DATA=${BENCH_WORK:-/tmp/portvakt-bench}/data
QPS=${QPS:-2000}
if [[ ${PORTVAKT_CALLGRIND_NETNS:-} != 1 ]]; then
  [[ -f $DATA/queries/blocked.txt ]] || "$BENCH/gen-data.sh" >&2
  exec env PORTVAKT_CALLGRIND_NETNS=1 unshare --net "$0" "$@"
fi
ip link set lo up
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$RUN"' EXIT
sed -e "s#@GW_PORT@#5353#g; s#@UP_PORT@#5300#g; s#@BLOCKLIST@#$DATA/blocklist.txt#g" \
  "$BENCH/configs/portvakt.toml.tmpl" > "$RUN/portvakt.toml"
[[ -z ${EXTRA_CONFIG:-} ]] || printf '%s\n' "$EXTRA_CONFIG" >> "$RUN/portvakt.toml"

# Instructions and answered queries of one run with `passes` passes over the query file.
measure() {
  local binary=$1 passes=$2
  valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.out" \
    "$binary" serve --config "$RUN/portvakt.toml" --log-level warn > "$RUN/out" 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do
    dig +tries=1 +time=1 -b 127.0.0.2 @127.0.0.1 -p 5353 tiktok.com | grep -q NXDOMAIN && break
    sleep 0.5
  done
  dnsperf -s 127.0.0.1 -p 5353 -a 127.0.0.2 -d "$DATA/queries/blocked.txt" -n "$passes" \
    -Q "$QPS" -c 1 -t 5 > "$RUN/dp.out" 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  local ir
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$RUN/cg.out")
  echo "$ir $(awk '/Queries completed/ { print $3 }' "$RUN/dp.out")"
}

for binary in "${@:-$HERE/target/release/portvakt}"; do
  read -r ir1 q1 < <(measure "$binary" 1)
  read -r ir3 q3 < <(measure "$binary" 3)
  awk -v b="$binary" -v i1="$ir1" -v q1="$q1" -v i3="$ir3" -v q3="$q3" 'BEGIN {
    printf "%s: user instructions per blocked query %.0f (%d and %d queries answered)\n", b, (i3 - i1) / (q3 - q1), q1, q3 }'
done
