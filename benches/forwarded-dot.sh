#!/usr/bin/env bash
# benches/forwarded-dot.sh: CPU per forwarded query with portvakt's upstream over DNS over TLS,
# beside dnsdist over Do53. The harness's "forwarded" workload (every answer has TTL 0, so every
# query is a miss) through ../shared/bench/compare.sh, twice in one run, each interleaved with
# dnsdist: (1) portvakt asking a DoT upstream (one connection, reused and pipelined), (2) portvakt
# asking the same upstream over Do53 (a fresh UDP port per try). The DoT upstream is a second NSD
# serving the harness's zones on 127.0.0.1:$UP_TLS_PORT with TLS (a certificate made here for
# dns.portvakt.test); dnsdist and the Do53 run ask the harness's own NSD.
#   cargo build --release && benches/forwarded-dot.sh
# Prints both compare lines (cpu_ratio = portvakt / dnsdist), portvakt's run log kept as
# $BENCH_WORK/results/portvakt-forwarded-{dot,do53}.log; env: RUNS="dot do53" UP_TLS_PORT=8531 ROUNDS=2 REPS=2
# PORTVAKT_BIN=target/release/portvakt, and every compare.sh / run-peer.sh knob. Loopback only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${BENCH:-$ROOT/../shared/bench}"
source "$BENCH/lib.sh"
# One private network namespace (loopback only) for the DoT upstream and the harness's runs.
if [[ -z "${BENCH_IN_NETNS:-}" ]] && unshare --net true 2>/dev/null; then
  export BENCH_IN_NETNS=1
  exec unshare --net -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
UP_TLS_PORT=${UP_TLS_PORT:-8531}
BIN=${PORTVAKT_BIN:-$ROOT/target/release/portvakt}
[[ -x "$BIN" ]] || die "$BIN is not an executable (cargo build --release)"
for tool in nsd openssl dig dnsdist dnsperf; do command -v "$tool" >/dev/null || die "$tool is missing"; done
"$BENCH/gen-data.sh" >/dev/null 2>&1 || "$BENCH/gen-data.sh"
D="$BENCH_WORK/data"
RUN="$BENCH_WORK/run/forwarded-dot-$$"
mkdir -p "$RUN"
NSD_PID=""
trap '[[ -n "$NSD_PID" ]] && kill "$NSD_PID" 2>/dev/null; rm -rf "$RUN"' EXIT

# A CA and a leaf for dns.portvakt.test and 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=portvakt bench CA" -keyout "$RUN/ca.key" -out "$RUN/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=dns.portvakt.test" \
  -keyout "$RUN/leaf.key" -out "$RUN/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:dns.portvakt.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$RUN/leaf.ext"
openssl x509 -req -in "$RUN/leaf.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" -CAcreateserial -days 2 \
  -extfile "$RUN/leaf.ext" -out "$RUN/leaf.pem" 2>/dev/null

# The DoT upstream: the harness's NSD config on a plain port beside it, plus TLS.
PLAIN=$(( UP_TLS_PORT + 1 ))
sed -e "s#@UP_PORT@#$PLAIN#g; s#@RUN@#$RUN#g; s#@DATA@#$D#g" "$BENCH/configs/nsd.conf.tmpl" > "$RUN/nsd.conf"
sed -i "/^  port: /a\\  ip-address: 127.0.0.1@$UP_TLS_PORT\\n  tls-port: $UP_TLS_PORT\\n  tls-service-key: \"$RUN/leaf.key\"\\n  tls-service-pem: \"$RUN/leaf.pem\"" "$RUN/nsd.conf"
nsd -d -c "$RUN/nsd.conf" > "$RUN/nsd.out" 2>&1 < /dev/null &
NSD_PID=$!
for _ in $(seq 1 50); do
  dig +tls +tls-ca="$RUN/ca.pem" +tls-hostname=dns.portvakt.test +time=1 +tries=1 -p "$UP_TLS_PORT" \
    @127.0.0.1 "host1.$NOCACHE_ZONE" A 2>/dev/null | grep -q 'status: NOERROR' && break
  sleep 0.2
done
dig +tls +tls-ca="$RUN/ca.pem" +tls-hostname=dns.portvakt.test +time=1 +tries=1 -p "$UP_TLS_PORT" \
  @127.0.0.1 "host1.$NOCACHE_ZONE" A | grep -q 'status: NOERROR' || { cat "$RUN/nsd.out" >&2; die "the DoT upstream does not answer"; }

# portvakt with the harness's config, its upstream line swapped for the DoT upstream.
DOT_CMD="sed -e 's#^servers = .*#servers = [\"tls://127.0.0.1:$UP_TLS_PORT\\#dns.portvakt.test\"]\\nca_file = \"$RUN/ca.pem\"#' \"\$BENCH_CONFIG\" > \"\$BENCH_RUN/portvakt-dot.toml\" && grep -q tls:// \"\$BENCH_RUN/portvakt-dot.toml\" && exec '$BIN' serve --config \"\$BENCH_RUN/portvakt-dot.toml\""
PLAIN_CMD="exec '$BIN' serve --config \"\$BENCH_CONFIG\""
LOGS="$BENCH_WORK/results"
for run in ${RUNS:-dot do53}; do
  case "$run" in
    dot) cmd=$DOT_CMD; log "forwarded, portvakt over a DoT upstream vs dnsdist over Do53" ;;
    do53) cmd=$PLAIN_CMD; log "forwarded, portvakt over Do53 vs dnsdist over Do53" ;;
    *) die "RUNS holds dot and do53" ;;
  esac
  line=$(PORTVAKT_CMD="$cmd" "$BENCH/compare.sh" forwarded dnsdist | tail -1)
  cp "$LOGS/portvakt-forwarded-pin${PIN:-1}.log" "$LOGS/portvakt-forwarded-$run.log" 2>/dev/null || true
  echo "upstream=$run $line"
done
