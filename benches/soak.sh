#!/usr/bin/env bash
# benches/soak.sh: portvakt under a long mixed load, in a private network namespace (loopback only).
#
#   blocked   UDP from 127.0.0.2 (staff)       names under the bench blocklist       BLOCKED_QPS
#   cached    UDP from 127.0.0.2                hostN.example.test (cache hits)       CACHED_QPS
#   forwarded UDP from 127.0.0.2                hostN.nocache.test (TTL 0: misses)    FORWARDED_QPS
#   tcp       TCP from 127.0.0.3 (devices)      the blocked names, allowed there      TCP_QPS
#   flood     UDP from 127.0.0.4 (guests)       cached names, far above the guests' rate limit   FLOOD_QPS
#   malformed UDP and TCP from 127.0.0.5        random bytes, cut and bogus frames     MALFORMED_PPS
# Upstream: two NSD servers; the second flaps (SIGSTOP / SIGCONT every FLAP_S seconds).
# Every RELOAD_S seconds a list is rewritten and SIGHUP sent; every 4th time the list has a line over
# the 4,096-byte limit, so that reload must fail and the previous policy keep serving.
# Report: RSS every window, answers lost per stream and window (the flood's losses are compared with
# what the rate limiter counted), p99 per stream and window, reloads, restarts, and a verdict.
#
# Needs: target/release/portvakt (cargo build --release), nsd, dnsperf, dig, python3, root for
# unshare --net (BENCH_NETNS=0 runs on the host's loopback). Data from ../shared/bench/gen-data.sh.
# Knobs: SOAK_S=1800 WINDOW_S=300 RELOAD_S=30 FLAP_S=30, the *_QPS above, REPORT=<file>.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${BENCH:-$ROOT/../shared/bench}"
source "$BENCH/lib.sh"

if [[ "${BENCH_NETNS:-auto}" != 0 && -z "${BENCH_IN_NETNS:-}" ]] && unshare --net true 2>/dev/null; then
  export BENCH_IN_NETNS=1
  exec unshare --net -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

SOAK_S=${SOAK_S:-1800} WINDOW_S=${WINDOW_S:-300} RELOAD_S=${RELOAD_S:-30} FLAP_S=${FLAP_S:-30}
BLOCKED_QPS=${BLOCKED_QPS:-2000} CACHED_QPS=${CACHED_QPS:-3000} FORWARDED_QPS=${FORWARDED_QPS:-1000}
TCP_QPS=${TCP_QPS:-500} FLOOD_QPS=${FLOOD_QPS:-3000} FLOOD_LIMIT=${FLOOD_LIMIT:-500}
MALFORMED_PPS=${MALFORMED_PPS:-200}
GW_PORT=${GW_PORT:-5353} UP_PORT=${UP_PORT:-5300} FLAP_PORT=$(( UP_PORT + 1 )) ADMIN_PORT=19999
WINDOWS=$(( SOAK_S / WINDOW_S ))
(( WINDOWS >= 1 )) || die "SOAK_S must be at least WINDOW_S"
BIN="$ROOT/target/release/portvakt"
[[ -x "$BIN" ]] || die "build first: cargo build --release"
for tool in nsd dnsperf dig python3; do command -v "$tool" >/dev/null || die "$tool is missing"; done

"$BENCH/gen-data.sh" >/dev/null 2>&1 || "$BENCH/gen-data.sh"
D="$BENCH_WORK/data"
RUN="$BENCH_WORK/run/soak-$$"
REPORT=${REPORT:-$BENCH_WORK/results/soak-$(date +%Y%m%d-%H%M%S).txt}
mkdir -p "$RUN" "$(dirname "$REPORT")"
PIDS=() GW_PID=""
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  stop_pid "$GW_PID"
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  [[ "${KEEP_RUN:-0}" == 1 ]] || rm -rf "$RUN"
  exit $rc
}
trap cleanup EXIT INT TERM
report() { echo "$*" | tee -a "$REPORT"; }

# ---- upstreams: a steady one and one that flaps ----
start_nsd() { # port name
  sed -e "s#@UP_PORT@#$1#g; s#@RUN@#$RUN/$2#g; s#@DATA@#$D#g" "$BENCH/configs/nsd.conf.tmpl" > "$RUN/$2.conf"
  mkdir -p "$RUN/$2"
  nsd -d -c "$RUN/$2.conf" >"$RUN/$2.out" 2>&1 </dev/null &
  PIDS+=($!)
  wait_ready 127.0.0.1 "$1" 20 $! || die "nsd on $1 did not start"
}
start_nsd "$UP_PORT" steady
start_nsd "$FLAP_PORT" flapping
FLAP_PID=${PIDS[-1]}

# ---- portvakt ----
cp "$D/blocklist.txt" "$RUN/blocked.txt"
echo "soak-0.example" > "$RUN/extra.txt"
cat > "$RUN/portvakt.toml" <<EOF
[server]
listen = ["127.0.0.1:$GW_PORT"]
unknown_clients = "refuse"
watch = false

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[lists.blocked]
files = ["$RUN/blocked.txt"]

[lists.extra]
files = ["$RUN/extra.txt"]

[rate_limit]
qps = 0

[[segment]]
name = "staff"
networks = ["127.0.0.2/32"]
block = ["blocked", "extra"]

[[segment]]
name = "devices"
networks = ["127.0.0.3/32"]

[[segment]]
name = "guests"
networks = ["127.0.0.4/32", "127.0.0.5/32"]
rate_limit = $FLOOD_LIMIT

[[upstream]]
servers = ["127.0.0.1:$UP_PORT", "127.0.0.1:$FLAP_PORT"]

[cache]
max_entries = 100000
EOF
"$BIN" serve --config "$RUN/portvakt.toml" >"$RUN/portvakt.log" 2>&1 </dev/null &
GW_PID=$!
wait_ready 127.0.0.1 "$GW_PORT" 30 "$GW_PID" || { cat "$RUN/portvakt.log" >&2; die "portvakt did not start"; }
metric() { # name{labels} -> value (0 when absent)
  curl -s "127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1==m {v=$2} END {print v+0}'
}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0; }

# ---- load ----
# stream NAME SOURCE QUERYFILE QPS MODE [TIMEOUT_S OUTSTANDING]: one dnsperf run per window; per
# window a line "NAME WINDOW sent completed lost p99_ms" (p99 over every answered query).
stream() {
  local name=$1 src=$2 file=$3 qps=$4 mode=$5 wait=${6:-5} outstanding=${7:-500} w
  for (( w = 1; w <= WINDOWS; w++ )); do
    timeout $(( WINDOW_S + 30 )) dnsperf -m "$mode" -s 127.0.0.1 -p "$GW_PORT" -a "$src" -d "$file" \
        -c 4 -q "$outstanding" -Q "$qps" -l "$WINDOW_S" -t "$wait" -v 2>&1 |
      awk -v name="$name" -v w="$w" '
        $1 == ">" && $2 != "T" { b = int($NF * 10000); h[b]++; n++ }   # 0.1 ms buckets
        /Queries sent:/ { sent = $3 } /Queries completed:/ { done = $3 } /Queries lost:/ { lost = $3 }
        END { k = 0; want = n * 0.99; p = 0
              for (i = 0; k < want && i <= 100000; i++) { k += h[i]; p = i }
              printf "%s %d %d %d %d %.1f\n", name, w, sent, done, lost, (p + 1) / 10 }' >> "$RUN/windows"
  done
}
malformed() { # random bytes to UDP and bad frames to TCP from 127.0.0.5, until killed
  python3 - "$GW_PORT" "$MALFORMED_PPS" <<'PY'
import os, random, socket, sys, time
port, pps = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(13)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.5", 0))
udp.setblocking(False)
sent = 0
while True:
    start = time.monotonic()
    for _ in range(pps // 10):
        kind = rng.randrange(4)
        if kind == 0:
            packet = os.urandom(rng.randrange(0, 600))
        elif kind == 1:  # a header claiming many records, then garbage
            packet = os.urandom(2) + b"\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff" + os.urandom(rng.randrange(0, 40))
        elif kind == 2:  # a compression pointer loop
            packet = os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
        else:
            packet = os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 + b"\x00\x00\x01"
        try:
            udp.sendto(packet, ("127.0.0.1", port))
        except OSError:
            pass
        try:
            while True:
                udp.recv(4096)
        except OSError:
            pass
    if sent % 10 == 0:  # once a second: a TCP connection with a bogus or cut-short frame
        try:
            tcp = socket.create_connection(("127.0.0.1", port), timeout=1, source_address=("127.0.0.5", 0))
            tcp.sendall(rng.choice([b"\xff\xff" + os.urandom(100), b"\x00\x0c" + os.urandom(12), os.urandom(7)]))
            tcp.close()
        except OSError:
            pass
    sent += 1
    time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))
PY
}

report "soak: ${SOAK_S}s in ${WINDOWS} windows of ${WINDOW_S}s; reload every ${RELOAD_S}s; upstream flaps every ${FLAP_S}s"
report "load: blocked ${BLOCKED_QPS} + cached ${CACHED_QPS} + forwarded ${FORWARDED_QPS} + tcp ${TCP_QPS} + flood ${FLOOD_QPS} (guests limited to ${FLOOD_LIMIT}) qps, malformed ${MALFORMED_PPS} pps"
report "binary: $BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), pid $GW_PID"
# The cached names are warmed first, so the cached stream is hits from its first query.
timeout 60 dnsperf -s 127.0.0.1 -p "$GW_PORT" -a 127.0.0.2 -d "$D/queries/cached.txt" -n 1 -Q 20000 >/dev/null 2>&1 || true
timeout 60 dnsperf -s 127.0.0.1 -p "$GW_PORT" -a 127.0.0.3 -d "$D/queries/allowed.txt" -n 1 -Q 20000 >/dev/null 2>&1 || true
: > "$RUN/windows"
LOADS=()
stream blocked 127.0.0.2 "$D/queries/blocked.txt" "$BLOCKED_QPS" udp & LOADS+=($!)
stream cached 127.0.0.2 "$D/queries/cached.txt" "$CACHED_QPS" udp & LOADS+=($!)
stream forwarded 127.0.0.2 "$D/queries/forwarded.txt" "$FORWARDED_QPS" udp & LOADS+=($!)
stream tcp 127.0.0.3 "$D/queries/allowed.txt" "$TCP_QPS" tcp & LOADS+=($!)
# The flood's dropped queries wait out their timeout: 1 s, and room for them outstanding.
stream flood 127.0.0.4 "$D/queries/cached.txt" "$FLOOD_QPS" udp 1 $(( FLOOD_QPS * 2 )) & LOADS+=($!)
malformed & MAL_PID=$!; PIDS+=($MAL_PID)

# ---- reloads, flaps and samples until the load is done ----
limited0=$(metric 'portvakt_rate_limited_total{segment="guests"}')
start=$(date +%s) next_reload=$(( start + RELOAD_S )) next_flap=$(( start + FLAP_S )) next_window=$(( start + WINDOW_S ))
reloads=0 broken=0 reload_checks_failed=0 stopped=0 restarts=0 window=0
RSS_START=$(rss)
report "rss at start (after warm-up of the cache): ${RSS_START} kB"
while :; do
  alive=0; for p in "${LOADS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  (( alive )) || break
  kill -0 "$GW_PID" 2>/dev/null || { restarts=$(( restarts + 1 )); report "portvakt died"; break; }
  now=$(date +%s)
  if (( now >= next_reload )); then
    reloads=$(( reloads + 1 )) next_reload=$(( next_reload + RELOAD_S ))
    if (( reloads % 4 == 0 )); then # must fail: a line over the limit
      { echo "soak-$reloads.example"; head -c 5000 /dev/zero | tr '\0' a; echo; } > "$RUN/extra.txt"
      broken=$(( broken + 1 )); expect="soak-$(( reloads - 1 )).example"
    else
      echo "soak-$reloads.example" > "$RUN/extra.txt"; expect="soak-$reloads.example"
    fi
    kill -HUP "$GW_PID"; sleep 1
    [[ "$(dig_rcode 127.0.0.1 "$GW_PORT" 127.0.0.2 "$expect")" == NXDOMAIN ]] ||
      { reload_checks_failed=$(( reload_checks_failed + 1 )); report "reload $reloads: $expect not blocked"; }
  fi
  if (( now >= next_flap )); then
    next_flap=$(( next_flap + FLAP_S ))
    if (( stopped )); then kill -CONT "$FLAP_PID"; stopped=0; else kill -STOP "$FLAP_PID"; stopped=1; fi
  fi
  if (( now >= next_window )); then
    window=$(( window + 1 )) next_window=$(( next_window + WINDOW_S ))
    report "window $window: rss $(rss) kB"
    [[ $window == 1 ]] && RSS_WARM=$(rss)
  fi
  sleep 1
done
(( stopped )) && kill -CONT "$FLAP_PID"
wait "${LOADS[@]}" 2>/dev/null || true
RSS_END=$(rss)
limited=$(( $(metric 'portvakt_rate_limited_total{segment="guests"}') - limited0 ))
ok=$(metric 'portvakt_reloads_total{result="success"}') failed=$(metric 'portvakt_reloads_total{result="failure"}')
kill -0 "$GW_PID" 2>/dev/null || restarts=$(( restarts + 1 ))
grep -q panicked "$RUN/portvakt.log" && report "panic in the log: $(grep -m1 panicked "$RUN/portvakt.log")"

report ""
report "stream    window      sent  completed   lost  p99_ms"
sort -k1,1 -k2,2n "$RUN/windows" | awk '{printf "%-9s %6d %9d %10d %6d %7.1f\n", $1, $2, $3, $4, $5, $6}' | tee -a "$REPORT"
lost_other=$(awk '$1 != "flood" {s += $5} END {print s + 0}' "$RUN/windows")
lost_flood=$(awk '$1 == "flood" {s += $5} END {print s + 0}' "$RUN/windows")
RSS_WARM=${RSS_WARM:-$RSS_START}
growth=$(awk -v a="$RSS_WARM" -v b="$RSS_END" 'BEGIN {printf "%.1f", 100 * (b - a) / a}')
report ""
report "rss: start ${RSS_START} kB, after the first window ${RSS_WARM} kB, end ${RSS_END} kB: growth after warm-up ${growth} %"
report "reloads: ${reloads} sent (${broken} meant to fail); counted success ${ok}, failure ${failed}; policy checks failed ${reload_checks_failed}"
report "rate limit: flood lost ${lost_flood}, limiter dropped or truncated ${limited}"
report "lost outside the flood: ${lost_other}; restarts: ${restarts}"
pass=1
awk -v g="$growth" 'BEGIN {exit !(g <= 5)}' || pass=0
(( lost_other == 0 && restarts == 0 && reload_checks_failed == 0 )) || pass=0
(( failed == broken && ok == reloads - broken )) || pass=0
(( lost_flood <= limited )) || pass=0
report "verdict: $([[ $pass == 1 ]] && echo PASS || echo FAIL) (targets: rss growth <= 5 %, 0 lost outside the flood, 0 restarts, every reload as meant)"
echo "report: $REPORT" >&2
(( pass ))
