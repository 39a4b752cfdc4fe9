#!/usr/bin/env bash
# Reload of the 1,000,054-name list, portvakt and Unbound side by side in one run:
# SIGHUP -> new policy in force (seconds), RSS before, peak RSS during the reload (VmHWM
# after resetting it with clear_refs), RSS after. Runs in a private network namespace.
#
#   cargo build --release && benches/reload-big.sh [rounds]
#
# Needs ../shared/bench (gen-data.sh makes the data) and unbound, curl, dig. Root (unshare, clear_refs).
set -euo pipefail
ROUNDS=${1:-2}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$HERE/../shared/bench}
DATA=${BENCH_WORK:-/tmp/portvakt-bench}/data
if [[ ${PORTVAKT_RELOAD_NETNS:-} != 1 ]]; then
  [[ -f $DATA/blocklist-all.txt ]] || "$BENCH/gen-data.sh" >&2
  exec env PORTVAKT_RELOAD_NETNS=1 unshare --net "$0" "$@"
fi
ip link set lo up
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$RUN"' EXIT

kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mb() { awk -v v="$1" 'BEGIN { printf "%.0f", v / 1024 }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
in_force() { [[ $(dig +short +tries=1 +time=1 -b 127.0.0.2 @127.0.0.1 -p 5353 x.blk0999999.example-ads.test | wc -l) == 0 ]] \
  && dig +tries=1 +time=1 -b 127.0.0.2 @127.0.0.1 -p 5353 x.blk0999999.example-ads.test | grep -q NXDOMAIN; }

sed -e "s#@GW_PORT@#5353#g; s#@UP_PORT@#5300#g; s#@BLOCKLIST@#$DATA/blocklist-all.txt#g" \
  "$BENCH/configs/portvakt.toml.tmpl" > "$RUN/portvakt.toml"
# Watching is off so that only the SIGHUP reloads.
sed -i 's/^unknown_clients = "refuse"$/unknown_clients = "refuse"\nwatch = false/' "$RUN/portvakt.toml"
sed -e "s#@GW_PORT@#5353#g; s#@UP_PORT@#5300#g; s#@RUN@#$RUN#g; s#@DATA@#$DATA#g; s#@THREADS@#1#g; s#@SLABS@#1#g" \
  -e "s#@BLOCKLIST@#$DATA/blocklist-all.txt#g; s#@BLOCKCONF@#$DATA/unbound-block-big.conf#g" \
  "$BENCH/configs/unbound.conf.tmpl" > "$RUN/unbound.conf"
sed -i "s#^  logfile: \"\"#  logfile: \"$RUN/unbound.log\"#; s#^  verbosity: 0#  verbosity: 1#" "$RUN/unbound.conf"

generation() { curl -s http://127.0.0.1:19999/api/v1/status | grep -o '"generation":[0-9]*' | head -1 | cut -d: -f2; }

measure() { # peer -> prints one line per round
  local peer=$1 pid t0 before peak after
  if [[ $peer == portvakt ]]; then
    "$HERE/target/release/portvakt" serve --config "$RUN/portvakt.toml" --log-level warn > "$RUN/p.log" 2>&1 &
  else
    : > "$RUN/unbound.log"
    unbound -d -c "$RUN/unbound.conf" > "$RUN/u.out" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 600); do in_force && break; sleep 0.1; done
  in_force || { echo "$peer: list not in force" >&2; return 1; }
  sleep 1
  for round in $(seq 1 "$ROUNDS"); do
    before=$(kb "$pid" VmRSS)
    echo 5 > "/proc/$pid/clear_refs"
    if [[ $peer == portvakt ]]; then
      local g0; g0=$(generation)
      t0=$(now); kill -HUP "$pid"
      for _ in $(seq 1 1200); do [[ $(generation) -gt $g0 ]] && break; sleep 0.02; done
    else
      local n0; n0=$(grep -c 'start of service' "$RUN/unbound.log" || true)
      t0=$(now); kill -HUP "$pid"
      for _ in $(seq 1 1200); do (( $(grep -c 'start of service' "$RUN/unbound.log" || true) > n0 )) && break; sleep 0.02; done
    fi
    local took; took=$(since "$t0")
    in_force || { echo "$peer: list not in force after reload" >&2; return 1; }
    sleep 1
    peak=$(kb "$pid" VmHWM); after=$(kb "$pid" VmRSS)
    echo "peer=$peer round=$round reload_s=$took rss_before_mb=$(mb "$before") rss_peak_mb=$(mb "$peak") rss_after_mb=$(mb "$after")"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

measure portvakt
measure unbound
