#!/usr/bin/env bash
# Observability checks on real tools, loopback only:
#   a real portvakt (release build) with dnsmasq as its upstream, fed bounded dig traffic;
#   promtool check metrics on a real scrape; promtool check/test rules on the alert rules;
#   a real Prometheus scraping portvakt, and every PromQL expression of the Grafana
#   dashboard evaluated against it; docker-compose config on both compose files; dnsdist's
#   and Prometheus's checks on their replica configs; kubernetes-validate on the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v kdig >/dev/null || need+=(knot-dnsutils)
apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ((${#need[@]})); then
  apt_install "${need[@]}"
fi

cargo build --release --locked --quiet
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

DNS=127.0.0.1:25353 DOT=127.0.0.1:25853 ADMIN=127.0.0.1:29153 UP_PORT=25300 PROM=127.0.0.1:29090

dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 \
  --port=$UP_PORT --local-ttl=2 --address=/example.test/192.0.2.1 --pid-file="$work/dnsmasq.pid" \
  >"$work/dnsmasq.log" 2>&1 &
pids+=($!)

# A certificate for the DoT listener (its expiry is a dashboard panel and an alert).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=dns.portvakt.test -addext subjectAltName=DNS:dns.portvakt.test,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir -p "$work/state"
cat >"$work/portvakt.toml" <<EOF
[server]
listen = ["$DNS"]
tls_listen = ["$DOT"]
tls_cert_file = "$work/cert.pem"
tls_key_file = "$work/key.pem"
state_dir = "$work/state"
[admin]
listen = "$ADMIN"
[lists.tiktok]
files = ["$repo/blocklists/tiktok.txt"]
[lists.telegram]
files = ["$repo/blocklists/telegram.txt"]
[[segment]]
name = "staff"
networks = ["127.0.0.2/32"]
block = ["tiktok", "telegram"]
[[segment]]
name = "tiktok-devices"
networks = ["127.0.0.3/32"]
[[upstream]]
servers = ["127.0.0.1:$UP_PORT"]
timeout_ms = 500
[rate_limit]
qps = 1000
[[expect]]
segment = "staff"
blocked = ["tiktok.com", "t.me"]
resolves = ["example.test"]
EOF
"$repo/target/release/portvakt" serve --config "$work/portvakt.toml" >"$work/portvakt.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "http://$ADMIN/readyz" >/dev/null || { cat "$work/portvakt.log"; exit 1; }

# Bounded traffic: blocked from staff, forwarded and cached from a device, refused from a stranger.
traffic() {
  for i in $(seq 1 "$1"); do
    dig +tries=1 +time=1 @127.0.0.1 -p 25353 -b 127.0.0.2 "v$i.tiktok.com" >/dev/null || true
    dig +tries=1 +time=1 @127.0.0.1 -p 25353 -b 127.0.0.2 +tcp t.me >/dev/null || true
    dig +tries=1 +time=1 @127.0.0.1 -p 25353 -b 127.0.0.3 "h$((i % 5)).example.test" >/dev/null || true
    dig +tries=1 +time=1 @127.0.0.1 -p 25353 -b 127.0.0.9 example.test >/dev/null || true
    kdig +tls +tls-ca="$work/cert.pem" +tls-hostname=dns.portvakt.test +time=1 +retry=0 \
      @127.0.0.1 -p 25853 "d$i.tiktok.com" >/dev/null 2>&1 || true
  done
}
traffic 10

echo "== promtool check metrics (real scrape)"
curl -fs "http://$ADMIN/metrics" >"$work/scrape.txt"
promtool check metrics <"$work/scrape.txt"
grep -E '^portvakt_queries_total\{decision="blocked",segment="staff",transport="udp"\} [1-9]' "$work/scrape.txt"

echo "== promtool check rules / test rules"
promtool check rules docker/prometheus/alerts.yml
(cd docker/prometheus && promtool test rules alerts.test.yml)

echo "== Prometheus scraping portvakt"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["$repo/docker/prometheus/alerts.yml"]
scrape_configs:
  - job_name: portvakt
    static_configs:
      - targets: ["$ADMIN"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="$PROM" >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://$PROM/-/ready" >/dev/null && break; sleep 0.1; done
curl -fs "http://$PROM/-/ready" >/dev/null || { tail -20 "$work/prometheus.log"; exit 1; }
# Prometheus applies new targets after a few seconds: wait (bounded) until portvakt is up.
for _ in $(seq 150); do
  curl -fs "http://$PROM/api/v1/query?query=up" | grep -q '"value":\[[0-9.]*,"1"\]' && break
  sleep 0.2
done
curl -fs "http://$PROM/api/v1/targets" | python3 -c 'import json,sys; [print("target", t["scrapeUrl"], t["health"], t["lastError"]) for t in json.load(sys.stdin)["data"]["activeTargets"]]'
# Traffic while Prometheus scrapes, so rates over the window have data (bounded).
traffic 10
sleep 3
python3 .ci/check_dashboard.py "http://$PROM" docker/grafana/dashboards/portvakt.json

echo "== docker-compose config"
docker-compose -f docker/compose.yaml config -q
docker-compose -f docker/compose.ha.yaml config -q

echo "== deployment files: dnsdist, Prometheus for the replicas, Kubernetes"
command -v dnsdist >/dev/null || apt_install dnsdist
dnsdist --check-config -C docker/dnsdist/dnsdist.conf
sed "s#/etc/prometheus/#$repo/docker/prometheus/#" docker/prometheus/prometheus-ha.yml >"$work/prometheus-ha.yml"
promtool check config "$work/prometheus-ha.yml"
validate=kubernetes-validate
if ! command -v "$validate" >/dev/null; then
  python3 -m venv "$work/venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$work/venv"; }
  "$work/venv/bin/pip" install --quiet kubernetes-validate
  validate="$work/venv/bin/kubernetes-validate"
fi
# The lists' ConfigMap, as `kubectl create configmap portvakt-lists --from-file=blocklists/` makes it.
python3 - "$work/lists.yaml" <<'PY'
import json, pathlib, sys
data = {p.name: p.read_text() for p in sorted(pathlib.Path("blocklists").glob("*.txt"))}
assert sum(len(v) for v in data.values()) < 1 << 20, "a ConfigMap holds at most 1 MiB"
doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "portvakt-lists"}, "data": data}
pathlib.Path(sys.argv[1]).write_text(json.dumps(doc))
PY
"$validate" --strict docker/kubernetes/*.yaml "$work/lists.yaml"
echo "observability checks passed"
