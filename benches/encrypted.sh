#!/usr/bin/env bash
# benches/encrypted.sh: the cost of serving DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484),
# portvakt against dnsdist and Unbound, in a private network namespace (loopback only); and portvakt's
# DNS over QUIC (RFC 9250) and DoH over HTTP/3 (modes doq, doh3: the installed dnsdist 1.7.3 and
# Unbound 1.17.1 serve neither, so those rows are portvakt's alone, beside its own DoT and DoH).
#
# Every peer runs the harness's policy (../shared/bench/configs/*.tmpl, rendered as run-peer.sh does:
# 127.0.0.2 gets NXDOMAIN for the 54 blocked domains, everything else is forwarded to NSD on
# 127.0.0.1:$UP_PORT and cached) plus the snippets in benches/encrypted/: DoT on 127.0.0.1:$DOT_PORT,
# DoH on 127.0.0.1:$DOH_PORT$DOH_PATH, all with one certificate made here (CA + leaf for IP 127.0.0.1
# and DNS dns.portvakt.test). Before measuring, dig checks the policy over DoT and DoH and the
# certificate against the CA (by name and by IP; a wrong name must fail).
#
# For each round, peer, mode (dot, doh) and workload (blocked: blocked.txt; cached: cached.txt after
# two warm-up passes over the same transport), both from 127.0.0.2:
#   (doq, doh3: benches/quic_load.rs instead of dnsperf and h2load, the same knobs; its handshake runs
#   open a QUIC connection, with TLS 1.3 inside, per query; probes with dnspython and aioquic)
#   efficiency  dnsperf -m dot -c CLIENTS -q OUTSTANDING -Q EFF_QPS -l EFF_DURATION, for DoH h2load -c CLIENTS
#               -m OUTSTANDING/CLIENTS --rps EFF_QPS/CLIENTS -D EFF_DURATION (GET, one URI per name; see
#               h2_eff for why not dnsperf): one connection per client, reused for the whole run -> server
#               CPU us per answered query (utime+stime of the peer's process tree, /proc), achieved qps,
#               lost %, and that CPU in units of the client's own CPU (cancels VM speed drift)
#   handshakes  dnsperf -O num-queries-per-conn=1: a new TCP + TLS (+ HTTP/2) connection for every query, full
#               handshakes (dnsperf keeps no TLS session, sends no SNI; ALPN h2 for DoH, none for DoT), twice:
#               (a) -Q HS_QPS -c HS_CLIENTS, a rate every peer sustains -> server CPU us per connection (its
#               one query included) and per handshake (that minus the efficiency run's us per query),
#               dnsperf's mean connect time (connect to TLS done) and the query's latency after it;
#               (b) no rate limit, -c HS_MAX_CLIENTS -> connections per second, with the server's and
#               dnsperf's share of a core. On the 2-vCPU box this is dnsperf's ceiling, not the server's:
#               dnsperf drives every connect and TLS handshake from its one sending thread, one socket at a
#               time (sockready waits up to 100 ms on a socket whose connect is pending), and that thread
#               keeps its core busy (mostly system time) already at 250 connections/s: it tops out near
#               500-850/s with PIN=1 while the servers use ~30-50 % of theirs.
#               Rank servers by CPU per connection; read the rates as "what one dnsperf gets".
# cpu_vs_client (server CPU / the client's CPU in the same run) cancels VM speed drift for DoT (dnsperf does
# the same work per query whatever the server); for DoH it does not: h2load's CPU depends on how the server
# frames its responses (it spent ~2x more per query against Unbound than against dnsdist).
# Peers are interleaved per round (odd rounds in PEERS order, even rounds reversed), so the ratios against
# REF come from the same period; one `enc` line per (peer, mode, workload) and one `ratio` line per
# other peer, on stdout and in $RESULTS. A peer that does not start, or whose DoT/DoH listener does not
# answer, is skipped with the reason (the rest still runs).
#
# Knobs (env, defaults): PEERS="portvakt dnsdist unbound" REF=dnsdist MODES="dot doh doq doh3"
#   WORKLOADS="blocked cached" ROUNDS=2 PIN=0 (1: peer and NSD on CPU 0, dnsperf on CPU 1)
#   THREADS (2, 1 if PIN=1: unbound num-threads, dnsdist UDP listeners and TCP workers)
#   CLIENTS=10 OUTSTANDING=200 EFF_QPS=20000 EFF_DURATION=8
#   HS=1 (0 skips the handshake runs) HS_QPS=250 HS_CLIENTS=50 HS_DURATION=5 HS_MAX=1 (0 skips run (b))
#   HS_MAX_CLIENTS=100 (dnsperf waits for each answer before it reconnects, so connections/s per client
#   are bounded by the round trip: connect + handshake + the first answer, which is ~50 ms from Unbound's
#   DoT, ~10 ms from dnsdist's, measured here)
#   DOT_PORT=8853 DOH_PORT=8443 DOH_PATH=/dns-query DOH_METHOD=GET (or POST: h2load then posts the file's
#   first name for every request) DOH_CLIENT=h2load (dnsperf: see h2_eff) CERT_KEY=ec (P-256) | rsa (2048)
#   QUIET_WAIT=10 (s to wait for a quiet machine before each run) FOREIGN_MAX=10 (% of the machine used by
#   other processes above which a run counts as contended; medians use clean rounds when there are any)
#   STARTUP_TIMEOUT=60 MAX_S=3600 (no new measurement starts after this many seconds) KEEP_RUN=0
#   PORTVAKT_BIN=target/release/portvakt QUIC_LOAD (the newest target/release/deps/quic_load-*; build it
#   with `cargo bench --bench quic_load --no-run`) BENCH=../shared/bench BENCH_WORK=/tmp/portvakt-bench
#   PORTVAKT_BIN_B (the peer portvakt-b: a second build, for an interleaved A/B of two portvakts)
#   BENCH_NETNS=auto|0|1 RESULTS=$BENCH_WORK/results/encrypted-<time>.txt
# Needs root (unshare --net; inside the namespace the TIME_WAIT table is switched off and the ephemeral
# range widened, so tens of thousands of short connections cannot run out of ports), dnsperf >= 2.10,
# dig >= 9.18 (+tls, +https), h2load (apt-get install nghttp2-client; not in ../shared/bench/install.sh),
# python3, openssl, nsd, dnsdist, unbound. Build portvakt first (cargo build --release); this does not build.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${BENCH:-$ROOT/../shared/bench}"
TMPL="$ROOT/benches/encrypted"
source "$BENCH/lib.sh"

# ---- a fresh network namespace: only lo ----
if [[ "${BENCH_NETNS:-auto}" != 0 && -z "${BENCH_IN_NETNS:-}" ]]; then
  if unshare --net true 2>/dev/null; then
    export BENCH_IN_NETNS=1
    exec unshare --net -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
  elif [[ "${BENCH_NETNS:-auto}" == 1 ]]; then
    die "BENCH_NETNS=1 but unshare --net failed (need root)"
  else
    log "network namespace unavailable; running in the host namespace (still loopback only)"
  fi
fi
if [[ -n "${BENCH_IN_NETNS:-}" ]]; then
  # Our namespace only: one connection per query must not exhaust ephemeral ports. dnsperf binds
  # before connecting, and bind() skips ports held by TIME_WAIT (tcp_tw_reuse only helps connect()).
  sysctl -q -w net.ipv4.tcp_max_tw_buckets=0 net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 \
    || log "could not tune TCP sysctls in the namespace; long handshake runs may run out of ports"
fi

PEERS=${PEERS:-"portvakt dnsdist unbound"} REF=${REF:-dnsdist}
MODES=${MODES:-"dot doh doq doh3"} WORKLOADS=${WORKLOADS:-"blocked cached"}
ROUNDS=${ROUNDS:-2} PIN=${PIN:-0}
THREADS=${THREADS:-$([[ $PIN == 1 ]] && echo 1 || echo 2)}
CLIENTS=${CLIENTS:-10} OUTSTANDING=${OUTSTANDING:-200}
EFF_QPS=${EFF_QPS:-20000} EFF_DURATION=${EFF_DURATION:-8}
HS=${HS:-1} HS_QPS=${HS_QPS:-250} HS_CLIENTS=${HS_CLIENTS:-50} HS_DURATION=${HS_DURATION:-5}
HS_MAX=${HS_MAX:-1} HS_MAX_CLIENTS=${HS_MAX_CLIENTS:-100}
DOT_PORT=${DOT_PORT:-8853} DOH_PORT=${DOH_PORT:-8443} DOH_PATH=${DOH_PATH:-/dns-query}
DOH_METHOD=${DOH_METHOD:-GET} CERT_KEY=${CERT_KEY:-ec}
DOH_CLIENT=${DOH_CLIENT:-$(command -v h2load >/dev/null && [[ -n "${BENCH_IN_NETNS:-}" ]] && echo h2load || echo dnsperf)}
QUIET_WAIT=${QUIET_WAIT:-10} FOREIGN_MAX=${FOREIGN_MAX:-10}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-60} MAX_S=${MAX_S:-3600}
PORTVAKT_BIN=${PORTVAKT_BIN:-$ROOT/target/release/portvakt}
CERT_NAME=dns.portvakt.test

for p in $PEERS; do case "$p" in portvakt|portvakt-b|dnsdist|unbound) ;; *) die "unknown peer $p (portvakt, portvakt-b, dnsdist, unbound)" ;; esac; done
for m in $MODES; do case "$m" in dot|doh|doq|doh3) ;; *) die "unknown mode $m (dot, doh, doq, doh3)" ;; esac; done
QUIC_LOAD=${QUIC_LOAD:-$(ls -t "$ROOT"/target/release/deps/quic_load-* 2>/dev/null | grep -v '\.d$' | head -1 || true)}
if [[ " $MODES " == *" doq "* || " $MODES " == *" doh3 "* ]]; then
  [[ -x "$QUIC_LOAD" ]] || die "modes doq and doh3 need benches/quic_load.rs built: cargo bench --bench quic_load --no-run (or set QUIC_LOAD)"
  python3 -c 'import aioquic, dns.quic' 2>/dev/null || die "modes doq and doh3 need python3 with dnspython and aioquic (pip install dnspython aioquic)"
fi
for w in $WORKLOADS; do case "$w" in blocked|cached) ;; *) die "unknown workload $w (blocked, cached)" ;; esac; done
case "$DOH_METHOD" in GET|POST) ;; *) die "DOH_METHOD must be GET or POST" ;; esac
case "$CERT_KEY" in ec|rsa) ;; *) die "CERT_KEY must be ec or rsa" ;; esac
case "$DOH_CLIENT" in
  h2load) command -v h2load >/dev/null || die "DOH_CLIENT=h2load: h2load is missing (apt-get install nghttp2-client)"
          [[ -n "${BENCH_IN_NETNS:-}" ]] || die "DOH_CLIENT=h2load needs the private network namespace (it changes a route there)" ;;
  dnsperf) [[ " $MODES " == *" doh "* ]] && log "DoH efficiency runs with dnsperf: servers that coalesce HTTP/2 responses (dnsdist) lose queries; install nghttp2-client for h2load" ;;
  *) die "DOH_CLIENT must be h2load or dnsperf" ;;
esac
[[ "$DOH_PATH" == /* ]] || die "DOH_PATH must start with /"
(( ROUNDS >= 1 && ROUNDS <= 20 )) || die "ROUNDS must be 1..20"
(( EFF_QPS > 0 && EFF_DURATION > 0 && EFF_DURATION <= 120 )) || die "EFF_QPS > 0 and EFF_DURATION 1..120 s"
(( HS_DURATION > 0 && HS_DURATION <= 60 && HS_QPS > 0 )) || die "HS_DURATION 1..60 s, HS_QPS > 0"
(( HS_CLIENTS >= 1 && HS_CLIENTS <= 500 && HS_MAX_CLIENTS >= 1 && HS_MAX_CLIENTS <= 500 )) || die "HS_CLIENTS and HS_MAX_CLIENTS 1..500"
for tool in dnsperf dig openssl nsd timeout; do command -v "$tool" >/dev/null || die "$tool is missing"; done
if [[ $PIN == 1 ]]; then SRV_PIN=(taskset -c 0); DP_PIN=(taskset -c 1); else SRV_PIN=(); DP_PIN=(); fi

"$BENCH/gen-data.sh" >/dev/null 2>&1 || "$BENCH/gen-data.sh"
D="$BENCH_WORK/data"
RUN="$BENCH_WORK/run/encrypted-$$"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-$BENCH_WORK/results/encrypted-$STAMP.txt}
DETAIL="$BENCH_WORK/results/encrypted-$STAMP.log"
RECORDS="$RUN/records"
mkdir -p "$RUN" "$(dirname "$RESULTS")" "$(dirname "$DETAIL")"
: > "$DETAIL"; : > "$RECORDS"

UP_PID="" GW_PID=""
cleanup() {
  local rc=$?
  stop_pid "$GW_PID"; stop_pid "$UP_PID"
  [[ "${KEEP_RUN:-0}" == 1 ]] || rm -rf "$RUN"
  exit $rc
}
trap cleanup EXIT INT TERM
detail() { echo "$*" >> "$DETAIL"; }

# ---- one certificate for every peer: a CA and a leaf for IP 127.0.0.1 and DNS dns.portvakt.test ----
newkey() { # file
  if [[ $CERT_KEY == ec ]]; then openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
  else openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"; fi 2>/dev/null
}
newkey "$RUN/ca.key"
openssl req -x509 -new -key "$RUN/ca.key" -days 2 -subj "/CN=portvakt bench CA" -out "$RUN/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
newkey "$RUN/leaf.key"
openssl req -new -key "$RUN/leaf.key" -subj "/CN=$CERT_NAME" -out "$RUN/leaf.csr" 2>/dev/null
ku=digitalSignature; [[ $CERT_KEY == rsa ]] && ku=digitalSignature,keyEncipherment
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,%s\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:%s\n' \
  "$ku" "$CERT_NAME" > "$RUN/leaf.ext"
openssl x509 -req -in "$RUN/leaf.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" -CAcreateserial -days 2 \
  -extfile "$RUN/leaf.ext" -out "$RUN/leaf.pem" 2>/dev/null
openssl verify -CAfile "$RUN/ca.pem" "$RUN/leaf.pem" >/dev/null || die "the generated certificate does not verify"
CERT="$RUN/leaf.pem" KEY="$RUN/leaf.key"

# ---- configs: the harness's templates, rendered as run-peer.sh does, plus our TLS/HTTPS snippets ----
render() { # template output [BLOCKCONF]
  sed -e "s#@GW_PORT@#$GW_PORT#g; s#@UP_PORT@#$UP_PORT#g; s#@RUN@#$RUN#g; s#@DATA@#$D#g" \
      -e "s#@THREADS@#$THREADS#g; s#@SLABS@#$(( THREADS>1 ? 2 : 1 ))#g; s#@BLOCKLIST@#$D/blocklist.txt#g" \
      -e "s#@BLOCKCONF@#${3:-}#g" \
      -e "s#@DOT_PORT@#$DOT_PORT#g; s#@DOH_PORT@#$DOH_PORT#g; s#@DOH_PATH@#$DOH_PATH#g; s#@CERT@#$CERT#g; s#@KEY@#$KEY#g" \
      "$1" > "$2"
}
render "$BENCH/configs/unbound.conf.tmpl" "$RUN/unbound.conf" "$D/unbound-block.conf"
sed -i "s#logfile: \"\"#logfile: \"$RUN/unbound.log\"#; s#verbosity: 0#verbosity: 1#" "$RUN/unbound.conf"
render "$TMPL/unbound.conf.tmpl" "$RUN/unbound-tls.conf"
cat "$RUN/unbound-tls.conf" >> "$RUN/unbound.conf"
render "$BENCH/configs/dnsdist.conf.tmpl" "$RUN/dnsdist.conf"
render "$TMPL/dnsdist.lua.tmpl" "$RUN/dnsdist-tls.lua"
cat "$RUN/dnsdist-tls.lua" >> "$RUN/dnsdist.conf"
render "$BENCH/configs/portvakt.toml.tmpl" "$RUN/portvakt.base.toml"
render "$TMPL/portvakt.toml.tmpl" "$RUN/portvakt-tls.toml"
# into [server], after its `listen` line ([admin] has a `listen` too)
sed "/^\[server\]/,/^\[/{/^listen *=/r $RUN/portvakt-tls.toml
}" "$RUN/portvakt.base.toml" > "$RUN/portvakt.toml"
grep -q '^tls_listen' "$RUN/portvakt.toml" || die "could not add the TLS keys to [server] of the portvakt config"

peer_cmd() { # peer -> CMD array
  case "$1" in
    unbound)  CMD=(unbound -d -c "$RUN/unbound.conf") ;;
    dnsdist)  CMD=(dnsdist --supervised --disable-syslog -C "$RUN/dnsdist.conf") ;;
    portvakt) CMD=("$PORTVAKT_BIN" serve --config "$RUN/portvakt.toml" --log-level warn) ;;
    portvakt-b) CMD=("$PORTVAKT_BIN_B" serve --config "$RUN/portvakt.toml" --log-level warn) ;;
  esac
}

# ---- probes over DoT / DoH (dig 9.18) ----
# enc_dig MODE SRC NAME [dig options]: the rcode, or TIMEOUT (no answer, TLS or HTTP failure). <= ~5 s.
enc_dig() {
  local mode=$1 src=$2 name=$3 out t; shift 3
  assert_loopback "$src"
  if [[ $mode == doq || $mode == doh3 ]]; then quic_dig "$mode" "$src" "$name" "$@"; return; fi
  case "$mode" in
    dot) t=(+tls -p "$DOT_PORT") ;;
    doh) if [[ $DOH_METHOD == GET ]]; then t=(+https-get="$DOH_PATH" -p "$DOH_PORT"); else t=(+https-post="$DOH_PATH" -p "$DOH_PORT"); fi ;;
  esac
  out=$(timeout 5 dig +time=2 +tries=1 "${t[@]}" "$@" -b "$src" @127.0.0.1 "$name" A 2>&1 || true)
  grep -q 'status:' <<<"$out" || { echo TIMEOUT; return; }
  sed -n 's/.*status: \([A-Z]*\),.*/\1/p' <<<"$out" | head -1
}
# quic_dig MODE SRC NAME [+tls-ca=CA] [+tls-hostname=NAME]: as enc_dig, over DoQ or DoH3 with dnspython
quic_dig() {
  local mode=$1 src=$2 name=$3 ca="" host="" a; shift 3
  for a in "$@"; do case "$a" in +tls-ca=*) ca=${a#+tls-ca=} ;; +tls-hostname=*) host=${a#+tls-hostname=} ;; esac; done
  timeout 8 python3 - "$mode" "$src" "$name" "$ca" "$host" "$([[ $mode == doq ]] && echo "$DOT_PORT" || echo "$DOH_PORT")" "$DOH_PATH" 2>/dev/null <<'PY' || echo TIMEOUT
import sys, dns.message, dns.query, dns.rcode
mode, src, name, ca, host, port, path = sys.argv[1:8]
q = dns.message.make_query(name, "A")
verify = ca if ca else False
try:
    if mode == "doq":
        r = dns.query.quic(q, "127.0.0.1", port=int(port), source=src, verify=verify, server_hostname=host or None, timeout=3)
    elif host:
        r = dns.query.https(q, f"https://{host}:{port}{path}", bootstrap_address="127.0.0.1", source=src, verify=verify, http_version=dns.query.HTTPVersion.H3, timeout=3)
    else:
        r = dns.query.https(q, "127.0.0.1", port=int(port), path=path, source=src, verify=verify, http_version=dns.query.HTTPVersion.H3, timeout=3)
    print(dns.rcode.to_text(r.rcode()))
except Exception:
    print("TIMEOUT")
PY
}
enc_wait() { # mode timeout_s pid: until the listener answers anything
  local deadline=$(( SECONDS + $2 ))
  while (( SECONDS < deadline )); do
    kill -0 "$3" 2>/dev/null || return 1
    [[ "$(enc_dig "$1" 127.0.0.1 "host0.$UPSTREAM_ZONE")" != TIMEOUT ]] && return 0
    sleep 0.2
  done
  return 1
}
# policy over MODE -> ok | FAIL (details in $DETAIL)
enc_policy() {
  local c1 c2 c3 c4 r=ok
  c1=$(enc_dig "$1" "$SRC_INTERNAL" www.tiktok.com); c2=$(enc_dig "$1" "$SRC_DEVICE" www.tiktok.com)
  c3=$(enc_dig "$1" "$SRC_INTERNAL" "host1.$UPSTREAM_ZONE"); c4=$(enc_dig "$1" "$SRC_INTERNAL" t.me)
  [[ "$c1" == NXDOMAIN && "$c4" == NXDOMAIN && "$c2" == NOERROR && "$c3" == NOERROR ]] || r=FAIL
  detail "policy $1: internal/www.tiktok.com=$c1 device/www.tiktok.com=$c2 internal/host1=$c3 internal/t.me=$c4 -> $r"
  echo "$r"
}
# certificate over MODE, verified with the CA -> ok | FAIL | unverified (dig accepted a wrong name)
enc_cert() {
  local byname byip wrong r=ok ca="+tls-ca=$RUN/ca.pem"
  byname=$(enc_dig "$1" "$SRC_INTERNAL" "host2.$UPSTREAM_ZONE" "$ca" "+tls-hostname=$CERT_NAME")
  byip=$(enc_dig "$1" "$SRC_INTERNAL" "host2.$UPSTREAM_ZONE" "$ca")
  wrong=$(enc_dig "$1" "$SRC_INTERNAL" "host2.$UPSTREAM_ZONE" "$ca" "+tls-hostname=wrong.portvakt.test")
  [[ "$byname" == NOERROR && "$byip" == NOERROR ]] || r=FAIL
  [[ $r == ok && "$wrong" != TIMEOUT ]] && r=unverified
  detail "cert $1: name $CERT_NAME=$byname ip 127.0.0.1=$byip wrong name=$wrong -> $r"
  echo "$r"
}

# ---- dnsperf and CPU accounting (as run-peer.sh) ----
field() { # name file -> value
  case "$1" in
    qps)  sed -n 's/^ *Queries per second: *\([0-9.]*\).*/\1/p' "$2" | head -1 ;;
    lost) sed -n 's/^ *Queries lost: *[0-9]* (\([0-9.]*\)%).*/\1/p' "$2" | head -1 ;;
    done) sed -n 's/^ *Queries completed: *\([0-9]*\).*/\1/p' "$2" | head -1 ;;
    reconn) sed -n 's/^ *Reconnections: *\([0-9]*\).*/\1/p' "$2" | head -1 ;;
    conn_avg) awk '/Connection Statistics:/ {c = 1} c && /Average Latency/ {print $4; exit}' "$2" ;;
    q_avg) sed -n 's/^ *Average Latency (s): *\([0-9.]*\).*/\1/p' "$2" | head -1 ;;
  esac
}
dp_args() { # mode workload -> DP array (common dnsperf arguments)
  local port=$DOT_PORT
  [[ $1 == doh ]] && port=$DOH_PORT
  DP=(dnsperf -m "$1" -s 127.0.0.1 -p "$port" -a "$SRC_INTERNAL" -d "$D/queries/$2.txt" -t 2)
  [[ $1 == doh ]] && DP+=(-O "doh-uri=https://$CERT_NAME:$DOH_PORT$DOH_PATH" -O "doh-method=$DOH_METHOD")
  return 0
}
# acct OUT LIMIT_S CMD...: the load generator CMD (pinned like everything else) into OUT, CPU accounted over
# the run. Sets A_WALL (s),
# A_GW (jiffies of the peer's tree), A_UP (NSD's), A_DP (the load generator's), A_FOREIGN (% of the machine used by
# processes that are none of these).
acct() {
  local out=$1 limit=$2 j0 j1 g0 g1 u0 u1 s0 s1; shift 2
  j0=$(cpu_busy_jiffies); g0=$(tree_jiffies "$GW_PID"); u0=$(tree_jiffies "$UP_PID"); s0=$(date +%s.%N)
  ( timeout "$limit" "${DP_PIN[@]}" "$@" > "$out" 2>&1 || true
    times > "$out.times2"; tail -1 "$out.times2" > "$out.times" )
  j1=$(cpu_busy_jiffies); g1=$(tree_jiffies "$GW_PID"); u1=$(tree_jiffies "$UP_PID"); s1=$(date +%s.%N)
  A_GW=$(( g1 - g0 )) A_UP=$(( u1 - u0 ))
  A_DP=$(awk -v hz="$CLK_TCK" '{ for (i=1;i<=2;i++) { split($i,a,/[ms]/); t+=a[1]*60+a[2] } } END{printf "%d", t*hz}' "$out.times")
  A_WALL=$(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.3f", b-a}')
  A_FOREIGN=$(awk -v j=$(( j1 - j0 )) -v o=$(( A_GW + A_UP )) -v d="$A_DP" -v w="$A_WALL" -v hz="$CLK_TCK" -v n="$NCPU" \
              'BEGIN{f=100*(j-o-d)/(w*hz*n); if (f<0) f=0; printf "%.1f", f}')
}
pct_core() { awk -v x="$1" -v w="$A_WALL" -v hz="$CLK_TCK" 'BEGIN{printf "%.0f", 100*x/(w*hz)}'; }
us_per() { awk -v j="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN{ if (n > 0) printf "%.2f", j/hz*1e6/n; else print "NA" }'; }
stats() { sed -n '/Statistics:/,$p' "$1" | grep -E 'Queries (sent|completed|lost)|Response codes|per second|Reconnections|Average Latency' || true; }

# ---- DoH efficiency with h2load ----
# dnsperf 2.10's DoH client hands over one response per socket read (net_doh.c: "only process one response
# per call", have_more left TODO): when a server coalesces several HTTP/2 responses into one read, as dnsdist's
# h2o does, the rest wait in dnsperf's buffer until more bytes arrive, and once -q queries are stuck nothing
# arrives: measured against dnsdist 1.7.3, -c 10 -q 20 at 5000 qps completed 26 of 86 queries, then stalled.
# So the DoH efficiency run (and its warm-up) uses h2load (nghttp2-client), which multiplexes correctly;
# handshake runs keep dnsperf (one query per connection cannot hit this). h2load cannot bind a source
# address, so for its runs the namespace's route to 127.0.0.1 gets source 127.0.0.2 (the internal client),
# checked with a dig that names no source: it must get the block answer.
h2_uris() { # workload -> $RUN/uris-WORKLOAD.txt: one GET URI per name of the query file (DNS ID 0, RD, no EDNS)
  [[ -s "$RUN/uris-$1.txt" ]] || python3 - "$D/queries/$1.txt" "https://127.0.0.1:$DOH_PORT$DOH_PATH" > "$RUN/uris-$1.txt" <<'PY'
import base64, struct, sys
types = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "SVCB": 64, "HTTPS": 65, "ANY": 255}
for line in open(sys.argv[1]):
    parts = line.split()
    if not parts:
        continue
    qname = b"".join(bytes([len(l)]) + l.encode() for l in parts[0].rstrip(".").split(".") if l) + b"\0"
    wire = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", types[parts[1] if len(parts) > 1 else "A"], 1)
    print(sys.argv[2] + "?dns=" + base64.urlsafe_b64encode(wire).rstrip(b"=").decode())
PY
  H2=(-B "https://127.0.0.1:$DOH_PORT" -i "$RUN/uris-$1.txt")
  if [[ $DOH_METHOD == POST ]]; then # h2load posts one body for every request: the file's first name
    base64 -d <<<"$(head -1 "$RUN/uris-$1.txt" | sed 's/.*dns=//; s/-/+/g; s/_/\//g' | awk '{ while (length($0) % 4) $0 = $0 "="; print }')" > "$RUN/post-$1.bin"
    H2=(-d "$RUN/post-$1.bin" -H "content-type: application/dns-message" "https://127.0.0.1:$DOH_PORT$DOH_PATH")
  fi
}
src_route() { ip route replace local 127.0.0.1 dev lo table local proto kernel scope host src "$1"; }
with_src() { # CMD...: run CMD with connections to 127.0.0.1 coming from the internal client
  local rc=0
  src_route "$SRC_INTERNAL"; "$@" || rc=$?; src_route 127.0.0.1
  return $rc
}
h2_eff() { # workload: sets ed eq el, E_CLIENT, E_CHECK, acct's A_*
  local rate=$(( (EFF_QPS + CLIENTS - 1) / CLIENTS )) streams=$(( OUTSTANDING / CLIENTS )) started ok
  (( streams >= 1 )) || streams=1
  h2_uris "$1"
  src_route "$SRC_INTERNAL"
  E_CHECK=$(timeout 5 dig +time=2 +tries=1 +https-get="$DOH_PATH" -p "$DOH_PORT" @127.0.0.1 www.tiktok.com A 2>&1 | sed -n 's/.*status: \([A-Z]*\),.*/\1/p' | head -1)
  [[ "$E_CHECK" == NXDOMAIN ]] && E_CHECK=ok || E_CHECK="www.tiktok.com=${E_CHECK:-TIMEOUT}"
  acct "$RUN/eff.out" $(( EFF_DURATION + 30 )) h2load -c "$CLIENTS" -m "$streams" --rps "$rate" -D "$EFF_DURATION" -N 5s "${H2[@]}"
  src_route 127.0.0.1
  E_CLIENT=h2load
  started=$(sed -n 's/^requests: [0-9]* total, \([0-9]*\) started.*/\1/p' "$RUN/eff.out")
  ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$RUN/eff.out")
  ed=$ok
  eq=$(sed -n 's/^finished in [0-9.]*m*s, \([0-9.]*\) req\/s.*/\1/p' "$RUN/eff.out")
  [[ -n "$eq" ]] || eq=$(awk -v n="$ok" -v w="$EFF_DURATION" 'BEGIN{ if (n != "") printf "%.1f", n / w }')
  el=$(awk -v s="$started" -v n="$ok" 'BEGIN{ if (s > 0 && n != "") printf "%.2f", 100 * (s - n) / s }')
}

# hs_run OUT ARGS...: one query per connection for HS_DURATION s. Sets H_DONE (connections that got their
# answer), H_QPS (per second), H_LOST, H_CPU (server us per connection), H_CONN (connect + TLS handshake, ms,
# dnsperf's "Connection Statistics"), H_QMS (the query after it, ms), and acct's A_*.
hs_run() {
  local out=$1; shift
  acct "$out" $(( HS_DURATION + 30 )) "${DP[@]}" -O num-queries-per-conn=1 -l "$HS_DURATION" "$@"
  H_DONE=$(field done "$out") H_QPS=$(field qps "$out") H_LOST=$(field lost "$out")
  if [[ -z "$H_DONE" || -z "$H_QPS" ]]; then
    detail "$(tail -5 "$out")"; log "dnsperf (handshakes) produced no result"; H_DONE=0 H_QPS=NA H_LOST=NA
  fi
  H_CONN=$(field conn_avg "$out") H_QMS=$(field q_avg "$out")
  [[ -n "$H_CONN" ]] && H_CONN=$(awk -v s="$H_CONN" 'BEGIN{printf "%.3f", s*1000}') || H_CONN=NA
  [[ -n "$H_QMS" ]] && H_QMS=$(awk -v s="$H_QMS" 'BEGIN{printf "%.3f", s*1000}') || H_QMS=NA
  H_CPU=$(us_per "$A_GW" "$H_DONE")
}

# ---- DoQ and DoH3 with quic_load ----
ql_args() { # mode workload -> QL array
  local port=$DOT_PORT
  [[ $1 == doh3 ]] && port=$DOH_PORT
  QL=("$QUIC_LOAD" "mode=$1" "server=127.0.0.1:$port" "source=$SRC_INTERNAL" "ca=$RUN/ca.pem" "name=$CERT_NAME" "queries=$D/queries/$2.txt")
}
ql_field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" "$2" | head -1; }
# ql_hs OUT ARGS...: as hs_run, a new QUIC connection per query
ql_hs() {
  local out=$1 sent; shift
  acct "$out" $(( HS_DURATION + 30 )) "${QL[@]}" fresh=1 "duration=$HS_DURATION" "$@"
  H_DONE=$(ql_field completed "$out") H_QPS=$(ql_field qps "$out") sent=$(ql_field sent "$out")
  [[ -n "$H_DONE" ]] || { detail "$(tail -5 "$out")"; H_DONE=0 H_QPS=NA; }
  H_LOST=$(awk -v s="$sent" -v n="$H_DONE" 'BEGIN{ if (s > 0) printf "%.2f", 100 * (s - n) / s; else print "NA" }')
  H_CONN=NA H_QMS=NA H_CPU=$(us_per "$A_GW" "$H_DONE")
}

# measure PEER MODE WORKLOAD ROUND: warm-up, efficiency run, handshake run -> one line in $RECORDS
measure() {
  local peer=$1 mode=$2 wl=$3 round=$4 i quiet ed="" eq="" el="" ecpu erel foreign hd hq hl hcpu hnet hconn hqms mq mcpu ml msrv mdp
  dp_args "$mode" "$wl"
  # warm-up: two passes over the same transport (dnsdist's packet cache keys on the transport too)
  if [[ $mode == doq || $mode == doh3 ]]; then
    ql_args "$mode" "$wl"
    if [[ $wl == cached ]]; then
      for i in 1 2; do timeout 60 "${DP_PIN[@]}" "${QL[@]}" clients=1 outstanding=10 qps=20000 duration=2 > "$RUN/warm.out" 2>&1 || true; done
      detail "== $peer $mode $wl round $round warm-up (quic_load): $(cat "$RUN/warm.out")"
    fi
    quiet=$(wait_quiet "$QUIET_WAIT")
    acct "$RUN/eff.out" $(( EFF_DURATION + 30 )) "${QL[@]}" "clients=$CLIENTS" "outstanding=$OUTSTANDING" "qps=$EFF_QPS" "duration=$EFF_DURATION"
    ed=$(ql_field completed "$RUN/eff.out"); eq=$(ql_field qps "$RUN/eff.out")
    el=$(awk -v s="$(ql_field sent "$RUN/eff.out")" -v n="$ed" 'BEGIN{ if (s > 0) printf "%.2f", 100 * (s - n) / s }')
    E_CLIENT=quic_load E_CHECK=ok
  elif [[ $mode == doh && $DOH_CLIENT == h2load ]]; then
    if [[ $wl == cached ]]; then
      h2_uris "$wl"
      with_src timeout 60 "${DP_PIN[@]}" h2load -c 1 -m 10 -n $(( 2 * $(wc -l < "$RUN/uris-$wl.txt") )) -N 5s "${H2[@]}" > "$RUN/warm.out" 2>&1 || true
      detail "== $peer $mode $wl round $round warm-up (h2load): $(grep -E '^requests:' "$RUN/warm.out")"
    fi
    quiet=$(wait_quiet "$QUIET_WAIT")
    h2_eff "$wl"
  else
    if [[ $wl == cached ]]; then
      for i in 1 2; do timeout 60 "${DP_PIN[@]}" "${DP[@]}" -n 1 -c 4 -Q 20000 -l 30 > "$RUN/warm.out" 2>&1 || true; done
      detail "== $peer $mode $wl round $round warm-up: $(stats "$RUN/warm.out" | grep -E 'completed|lost' | tr -s ' ' | paste -sd' ')"
    fi
    quiet=$(wait_quiet "$QUIET_WAIT")
    acct "$RUN/eff.out" $(( EFF_DURATION + 30 )) "${DP[@]}" -c "$CLIENTS" -q "$OUTSTANDING" -Q "$EFF_QPS" -l "$EFF_DURATION"
    ed=$(field done "$RUN/eff.out"); eq=$(field qps "$RUN/eff.out"); el=$(field lost "$RUN/eff.out")
    E_CLIENT=dnsperf E_CHECK=ok
  fi
  if [[ -z "$ed" || -z "$eq" ]]; then
    detail "$(tail -5 "$RUN/eff.out")"; log "$peer $mode $wl: $E_CLIENT (efficiency) produced no result"; ed=0 eq=NA el=NA
  fi
  ecpu=$(us_per "$A_GW" "$ed")
  erel=$(awk -v j="$A_GW" -v d="$A_DP" 'BEGIN{ if (d>0) printf "%.3f", j/d; else print "NA" }')
  foreign=$A_FOREIGN
  { echo "== $peer $mode $wl round $round efficiency @${EFF_QPS}qps with $E_CLIENT (pre-run busy ${quiet}%): completed=$ed achieved=${eq}qps lost=${el}% server $(pct_core "$A_GW")% + NSD $(pct_core "$A_UP")% of a core, $E_CLIENT $(pct_core "$A_DP")%, foreign ${A_FOREIGN}% of machine -> ${ecpu} us/query (${erel} x the client's CPU)"
    if [[ $E_CLIENT == h2load ]]; then echo "  source check (internal client sees the block): $E_CHECK"; grep -E '^(finished|requests|status codes|time for)' "$RUN/eff.out"
    elif [[ $E_CLIENT == quic_load ]]; then cat "$RUN/eff.out"; else stats "$RUN/eff.out"; fi; } >> "$DETAIL"
  [[ $E_CHECK == ok ]] || { log "$peer $mode $wl: the h2load source check failed ($E_CHECK): its answers were not the internal client's; result dropped"; ecpu=NA eq=NA el=NA erel=NA; }
  hd=NA hq=NA hl=NA hcpu=NA hnet=NA hconn=NA hqms=NA mq=NA mcpu=NA ml=NA msrv=NA mdp=NA
  if [[ $HS == 1 ]]; then
    # (a) fixed rate: CPU per connection at a load every peer sustains
    if [[ $E_CLIENT == quic_load ]]; then ql_hs "$RUN/hs.out" "qps=$HS_QPS" "outstanding=$HS_CLIENTS" clients=1
    else hs_run "$RUN/hs.out" -Q "$HS_QPS" -c "$HS_CLIENTS" -q "$HS_CLIENTS"; fi
    hd=$H_DONE hq=$H_QPS hl=$H_LOST hcpu=$H_CPU hconn=$H_CONN hqms=$H_QMS
    hnet=$(awk -v a="$hcpu" -v b="$ecpu" 'BEGIN{ if (a == "NA" || b == "NA") print "NA"; else printf "%.2f", a-b }')
    { echo "== $peer $mode $wl round $round handshakes @${HS_QPS}/s (1 query per connection, $HS_CLIENTS clients): connections=$hd ${hq}/s lost=${hl}% connect ${hconn} ms, query ${hqms} ms, server $(pct_core "$A_GW")% + NSD $(pct_core "$A_UP")% of a core, dnsperf $(pct_core "$A_DP")%, foreign ${A_FOREIGN}% -> ${hcpu} us/connection, ${hnet} us/handshake"
      stats "$RUN/hs.out"; } >> "$DETAIL"
    foreign=$(awk -v a="$foreign" -v b="$A_FOREIGN" 'BEGIN{print (b>a) ? b : a}')
    # (b) as fast as it goes: connections per second, and who ran out of CPU (server or dnsperf)
    if [[ $HS_MAX == 1 ]]; then
      if [[ $E_CLIENT == quic_load ]]; then ql_hs "$RUN/hsmax.out" qps=1000000 "outstanding=$HS_MAX_CLIENTS" clients=1
      else hs_run "$RUN/hsmax.out" -c "$HS_MAX_CLIENTS" -q "$HS_MAX_CLIENTS"; fi
      mq=$H_QPS mcpu=$H_CPU ml=$H_LOST msrv=$(pct_core "$A_GW") mdp=$(pct_core "$A_DP")
      { echo "== $peer $mode $wl round $round handshakes unlimited ($HS_MAX_CLIENTS clients): connections=$H_DONE ${mq}/s lost=${ml}% connect ${H_CONN} ms, query ${H_QMS} ms, server ${msrv}% + NSD $(pct_core "$A_UP")% of a core, dnsperf ${mdp}%, foreign ${A_FOREIGN}% -> ${mcpu} us/connection"
        stats "$RUN/hsmax.out"; } >> "$DETAIL"
      foreign=$(awk -v a="$foreign" -v b="$A_FOREIGN" 'BEGIN{print (b>a) ? b : a}')
    fi
  fi
  echo "peer=$peer mode=$mode workload=$wl round=$round eff_client=$E_CLIENT foreign=$foreign eff_cpu=$ecpu eff_qps=$eq eff_lost=$el eff_rel=$erel hs_cps=$hq hs_cpu=$hcpu hs_net=$hnet hs_lost=$hl hs_conn_ms=$hconn hs_query_ms=$hqms max_cps=$mq max_cpu=$mcpu max_lost=$ml max_srv_pct=$msrv max_dp_pct=$mdp" >> "$RECORDS"
  log "$peer $mode $wl round $round: ${ecpu} us/q at ${eq} qps (lost ${el}%); handshakes ${hq}/s at ${hcpu} us/conn, at most ${mq}/s; foreign ${foreign}%"
}

# run_peer PEER ROUND: start it, check it, measure every mode x workload, stop it
run_peer() {
  local peer=$1 round=$2 m w pol cert status=ok
  if [[ $peer == portvakt && ! -x "$PORTVAKT_BIN" ]]; then
    skip "$peer" "$round" "$PORTVAKT_BIN is not an executable (cargo build --release, or set PORTVAKT_BIN)"; return
  fi
  if [[ $peer == portvakt-b && ! -x "${PORTVAKT_BIN_B:-}" ]]; then
    skip "$peer" "$round" "PORTVAKT_BIN_B is not set to an executable"; return
  fi
  command -v "$peer" >/dev/null || [[ $peer == portvakt* ]] || { skip "$peer" "$round" "$peer is not installed"; return; }
  [[ "$(dig_rcode 127.0.0.1 "$GW_PORT" 127.0.0.1 probe.invalid)" == TIMEOUT ]] || die "port $GW_PORT already answers"
  peer_cmd "$peer"
  log "round $round: starting $peer: ${CMD[*]}"
  "${SRV_PIN[@]}" "${CMD[@]}" > "$RUN/$peer.out" 2>&1 < /dev/null &
  GW_PID=$!
  if ! wait_ready 127.0.0.1 "$GW_PORT" "$STARTUP_TIMEOUT" "$GW_PID"; then
    local why="no answer on 127.0.0.1:$GW_PORT within ${STARTUP_TIMEOUT}s" rc=0
    if ! kill -0 "$GW_PID" 2>/dev/null; then wait "$GW_PID" || rc=$?; why="exited with status $rc before answering"; fi
    skip "$peer" "$round" "did not start: $why"
    stop_pid "$GW_PID"; GW_PID=""; return
  fi
  # dnsdist 1.7.3 and Unbound 1.17.1 serve no DoQ and no DoH3
  local modes="" m0
  for m0 in $MODES; do
    if [[ ($m0 == doq || $m0 == doh3) && $peer != portvakt* ]]; then continue; fi
    modes+="$m0 "
  done
  for m in $modes; do
    if ! enc_wait "$m" 20 "$GW_PID"; then
      skip "$peer" "$round" "its $m listener (127.0.0.1:$([[ $m == dot ]] && echo "$DOT_PORT" || echo "$DOH_PORT")) does not answer"
      status=skip; break
    fi
  done
  if [[ $status == ok ]]; then
    sleep 1
    RSS_IDLE=$(rss_kb "$GW_PID")
    for m in $modes; do
      pol=$(enc_policy "$m"); cert=$(enc_cert "$m")
      echo "peer=$peer mode=$m round=$round policy=$pol cert=$cert" >> "$RUN/checks"
      [[ $pol == ok && $cert == ok ]] || log "$peer $m: policy=$pol cert=$cert (measuring anyway; see $DETAIL)"
      for w in $WORKLOADS; do
        (( SECONDS < DEADLINE )) || { log "MAX_S=${MAX_S}s reached: no new measurement"; break 2; }
        kill -0 "$GW_PID" 2>/dev/null || { skip "$peer" "$round" "exited during the $m $w run"; break 2; }
        measure "$peer" "$m" "$w" "$round"
      done
    done
    echo "peer=$peer round=$round rss_idle_kb=$RSS_IDLE rss_kb=$(rss_kb "$GW_PID")" >> "$RUN/rss"
  fi
  stop_pid "$GW_PID"; GW_PID=""
}
skip() { # peer round reason
  log "SKIP $1 (round $2): $3"
  if [[ -s "$RUN/$1.out" ]]; then log "  last lines of its output:"; tail -8 "$RUN/$1.out" | sed 's/^/    /' >&2; fi
  echo "peer=$1 round=$2 reason=$3" >> "$RUN/skips"
  { echo "== SKIP $1 round $2: $3"; tail -20 "$RUN/$1.out" 2>/dev/null || true; } >> "$DETAIL"
}

# ---- upstream: NSD on 127.0.0.1:$UP_PORT, for the whole run ----
[[ "$(dig_rcode 127.0.0.1 "$UP_PORT" 127.0.0.1 probe.invalid)" == TIMEOUT ]] || die "port $UP_PORT already in use"
render "$BENCH/configs/nsd.conf.tmpl" "$RUN/nsd.conf"
"${SRV_PIN[@]}" nsd -d -c "$RUN/nsd.conf" > "$RUN/nsd.out" 2>&1 < /dev/null &
UP_PID=$!
wait_ready 127.0.0.1 "$UP_PORT" 20 "$UP_PID" || { cat "$RUN/nsd.out" "$RUN/nsd.log" >&2 || true; die "upstream did not start"; }

: > "$RUN/checks"; : > "$RUN/skips"; : > "$RUN/rss"
DEADLINE=$(( SECONDS + MAX_S ))
log "peers: $PEERS; modes: $MODES; workloads: $WORKLOADS; rounds: $ROUNDS; PIN=$PIN THREADS=$THREADS; eff ${EFF_QPS} qps x ${EFF_DURATION}s, $CLIENTS clients; handshakes ${HS_QPS}/s ($HS_CLIENTS clients) and unlimited ($HS_MAX_CLIENTS clients) x ${HS_DURATION}s; cert $CERT_KEY; details: $DETAIL"
detail "encrypted.sh $(date -u +%FT%TZ) peers=[$PEERS] ref=$REF modes=[$MODES] workloads=[$WORKLOADS] rounds=$ROUNDS pin=$PIN threads=$THREADS clients=$CLIENTS outstanding=$OUTSTANDING eff_qps=$EFF_QPS eff_duration=$EFF_DURATION hs=$HS hs_qps=$HS_QPS hs_clients=$HS_CLIENTS hs_duration=$HS_DURATION hs_max=$HS_MAX hs_max_clients=$HS_MAX_CLIENTS doh_method=$DOH_METHOD cert_key=$CERT_KEY portvakt=$PORTVAKT_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
detail "versions: dnsdist $(dnsdist --version 2>/dev/null | head -1 | awk '{print $2}'), unbound $(unbound -V 2>/dev/null | sed -n 's/^Version //p'), $(dnsperf -h 2>&1 | grep -m1 Version), $(openssl version)"
read -r -a PEER_LIST <<< "$PEERS"
for (( round = 1; round <= ROUNDS; round++ )); do
  order=("${PEER_LIST[@]}")
  if (( round % 2 == 0 )); then order=(); for (( i = ${#PEER_LIST[@]} - 1; i >= 0; i-- )); do order+=("${PEER_LIST[i]}"); done; fi
  for peer in "${order[@]}"; do
    (( SECONDS < DEADLINE )) || break 2
    run_peer "$peer" "$round"
  done
done

# ---- summary: medians over the clean rounds (all rounds if none was clean), ratios against REF ----
cat "$RUN/checks" "$RUN/rss" "$RUN/skips" >> "$DETAIL"
{ sed 's/^/rec /' "$RECORDS"; sed 's/^/chk /' "$RUN/checks"; sed 's/^/rss /' "$RUN/rss"; sed 's/^/skp /' "$RUN/skips"; } |
awk -v ref="$REF" -v fmax="$FOREIGN_MAX" -v peers="$PEERS" -v modes="$MODES" -v wls="$WORKLOADS" -v pin="$PIN" \
    -v threads="$THREADS" -v effq="$EFF_QPS" -v clients="$CLIENTS" -v hsq="$HS_QPS" -v hsc="$HS_CLIENTS" \
    -v hmc="$HS_MAX_CLIENTS" -v ckey="$CERT_KEY" -v dm="$DOH_METHOD" '
  function med(list,   n, a, i, j, t) {
    n = split(list, a, ","); if (n == 0 || list == "") return "NA"
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j+1] = a[j]; a[j+1] = t }
    return (n % 2) ? a[(n+1)/2] : sprintf("%.6g", (a[n/2] + a[n/2+1]) / 2) }
  function add(key, v) { if (v == "" || v == "NA") return; pool[key] = (pool[key] == "" ? v : pool[key] "," v) }
  function ratio(a, b) { return (a == "NA" || b == "NA" || a == "" || b == "" || b + 0 == 0) ? "NA" : sprintf("%.3f", a / b) }
  function int0(v) { return (v == "NA") ? v : sprintf("%.0f", v) }
  function V(id, f) { return ((id, f) in v) ? v[id, f] : "NA" }
  BEGIN { nf = split("foreign eff_cpu eff_qps eff_lost eff_rel hs_cps hs_cpu hs_net hs_lost hs_conn_ms hs_query_ms max_cps max_cpu max_lost max_srv_pct max_dp_pct", F, " ") }
  { kind = $1; delete k; for (i = 2; i <= NF; i++) { split($i, kv, "="); k[kv[1]] = substr($i, length(kv[1]) + 2) } }
  kind == "rec" { id = k["peer"] SUBSEP k["mode"] SUBSEP k["workload"]; n[id]++; r = k["round"]
    for (f in k) rec[id, r, f] = k[f]; rounds[id] = rounds[id] (rounds[id] == "" ? "" : " ") r
    if (k["foreign"] + 0 <= fmax) clean[id]++ }
  kind == "chk" { id = k["peer"] SUBSEP k["mode"]
    if (!((id, "pol") in chk) || k["policy"] != "ok") chk[id, "pol"] = k["policy"]
    if (!((id, "cert") in chk) || k["cert"] != "ok") chk[id, "cert"] = k["cert"] }
  kind == "rss" { add(k["peer"] SUBSEP "rss", k["rss_kb"]); add(k["peer"] SUBSEP "rssi", k["rss_idle_kb"]) }
  kind == "skp" { reason = $0; sub(/^skp peer=[^ ]* round=[^ ]* reason=/, "", reason); skipped[k["peer"]] = reason }
  END {
    np = split(peers, P, " "); nm = split(modes, M, " "); nw = split(wls, W, " ")
    for (a = 1; a <= np; a++) for (b = 1; b <= nm; b++) for (c = 1; c <= nw; c++) {
      p = P[a]; id = p SUBSEP M[b] SUBSEP W[c]
      if (!(id in n)) { printf "enc peer=%s mode=%s workload=%s skipped=\"%s\"\n", p, M[b], W[c], (p in skipped) ? skipped[p] : "no measurement"; continue }
      use_all = !(clean[id] > 0); nr = split(rounds[id], R, " ")
      for (x = 1; x <= nr; x++) { r = R[x]
        if (!use_all && rec[id, r, "foreign"] + 0 > fmax) continue
        used[id]++
        for (y = 1; y <= nf; y++) add(id SUBSEP F[y], rec[id, r, F[y]]) }
      for (y = 1; y <= nf; y++) v[id, F[y]] = med(pool[id SUBSEP F[y]])
      pk = p SUBSEP M[b]
      printf "enc peer=%s mode=%s workload=%s cpu_us_per_q=%s eff_qps=%s eff_lost_pct=%s cpu_vs_client=%s eff_client=%s hs_cpu_us_per_conn=%s hs_cpu_us_per_handshake=%s hs_conn_per_s=%s hs_lost_pct=%s hs_connect_ms=%s hs_query_ms=%s max_conn_per_s=%s max_cpu_us_per_conn=%s max_lost_pct=%s max_server_core_pct=%s max_dnsperf_core_pct=%s rss_kb=%s rss_idle_kb=%s policy=%s cert=%s rounds=%d/%d contended=%s foreign_cpu_pct=%s cpu_us_all=%s hs_cpu_all=%s max_cps_all=%s pin=%s threads=%s eff_target_qps=%s clients=%s hs_target_cps=%s hs_clients=%s max_clients=%s cert_key=%s doh_method=%s\n",
        p, M[b], W[c], V(id, "eff_cpu"), int0(V(id, "eff_qps")), V(id, "eff_lost"), V(id, "eff_rel"), rec[id, R[1], "eff_client"], V(id, "hs_cpu"), V(id, "hs_net"), int0(V(id, "hs_cps")),
        V(id, "hs_lost"), V(id, "hs_conn_ms"), V(id, "hs_query_ms"), int0(V(id, "max_cps")), V(id, "max_cpu"), V(id, "max_lost"), V(id, "max_srv_pct"), V(id, "max_dp_pct"),
        int0(med(pool[p SUBSEP "rss"])), int0(med(pool[p SUBSEP "rssi"])), ((pk, "pol") in chk) ? chk[pk, "pol"] : "NA", ((pk, "cert") in chk) ? chk[pk, "cert"] : "NA",
        used[id], n[id], use_all ? "yes" : "no", pool[id SUBSEP "foreign"], pool[id SUBSEP "eff_cpu"], pool[id SUBSEP "hs_cpu"], pool[id SUBSEP "max_cps"],
        pin, threads, effq, clients, hsq, hsc, hmc, ckey, dm
    }
    for (a = 1; a <= np; a++) { p = P[a]; if (p == ref) continue
      for (b = 1; b <= nm; b++) for (c = 1; c <= nw; c++) {
        id = p SUBSEP M[b] SUBSEP W[c]; rid = ref SUBSEP M[b] SUBSEP W[c]
        if (!(id in n) || !(rid in n)) { printf "ratio peer=%s ref=%s mode=%s workload=%s skipped=yes\n", p, ref, M[b], W[c]; continue }
        cr = ""; hr = ""; mr = ""; nr = split(rounds[id], R, " ")
        for (x = 1; x <= nr; x++) { r = R[x]; if (!((rid, r, "round") in rec)) continue
          cr = cr (cr == "" ? "" : ",") ratio(rec[id, r, "eff_cpu"], rec[rid, r, "eff_cpu"])
          hr = hr (hr == "" ? "" : ",") ratio(rec[id, r, "hs_cpu"], rec[rid, r, "hs_cpu"])
          mr = mr (mr == "" ? "" : ",") ratio(rec[id, r, "max_cps"], rec[rid, r, "max_cps"]) }
        printf "ratio peer=%s ref=%s mode=%s workload=%s cpu_ratio=%s rel_cpu_ratio=%s eff_qps_ratio=%s hs_cpu_ratio=%s hs_handshake_cpu_ratio=%s max_conn_rate_ratio=%s cpu_ratio_rounds=%s hs_cpu_ratio_rounds=%s max_conn_rate_ratio_rounds=%s\n",
          p, ref, M[b], W[c], ratio(V(id, "eff_cpu"), V(rid, "eff_cpu")), ratio(V(id, "eff_rel"), V(rid, "eff_rel")), ratio(V(id, "eff_qps"), V(rid, "eff_qps")),
          ratio(V(id, "hs_cpu"), V(rid, "hs_cpu")), ratio(V(id, "hs_net"), V(rid, "hs_net")), ratio(V(id, "max_cps"), V(rid, "max_cps")),
          (cr == "" ? "NA" : cr), (hr == "" ? "NA" : hr), (mr == "" ? "NA" : mr) } }
  }' | tee -a "$RESULTS"
cp "$RECORDS" "${RESULTS%.txt}.records"
log "results: $RESULTS (per-round records ${RESULTS%.txt}.records, details $DETAIL)"
