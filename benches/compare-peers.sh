#!/usr/bin/env bash
# Whole-server comparison: portvakt against Unbound and dnsdist with ../shared/bench, side by
# side in one run (compare.sh alternates A B A B), then a markdown table.
#   benches/compare-peers.sh                       # every workload, both peers, and the 1M-name startup
#   WORKLOADS="blocked cached" REFS=unbound BIG=0 benches/compare-peers.sh
#   PIN=0 BIG=0 benches/compare-peers.sh            # unpinned: the whole box (compare.sh pins by default)
# Needs root (private network namespace) and the harness's tools: ../shared/bench/install.sh,
# then ../shared/bench/gen-data.sh. Builds portvakt --release first. Loopback only.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bench="$repo/../shared/bench"
[[ -x "$bench/compare.sh" ]] || { echo "error: $bench/compare.sh not found" >&2; exit 2; }
WORKLOADS=${WORKLOADS:-"blocked cached mixed allowed"}
REFS=${REFS:-"unbound dnsdist"}
BIG=${BIG:-1}
export BENCH_WORK=${BENCH_WORK:-/tmp/portvakt-bench}
export PORTVAKT_CMD="exec $repo/target/release/portvakt serve --config \"\$BENCH_CONFIG\" --log-level warn"

cargo build --release --locked --quiet --manifest-path "$repo/Cargo.toml"
out="$BENCH_WORK/results/compare-peers-$(date +%Y%m%d-%H%M%S).txt"
mkdir -p "$(dirname "$out")"
for workload in $WORKLOADS; do
  for ref in $REFS; do
    "$bench/compare.sh" "$workload" "$ref" | tee -a "$out"
  done
done
if [[ "$BIG" == 1 ]]; then
  for peer in portvakt-big unbound-big; do
    RESULTS="$out" "$bench/run-peer.sh" "$peer" startup | tail -1 | tee -a "$out.startup"
  done
fi

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
echo
echo "| workload | peer | portvakt qps | peer qps | qps ratio | portvakt CPU µs/q | peer CPU µs/q | CPU ratio | ratio per round | portvakt p99 ms | peer p99 ms | portvakt RSS kB | peer RSS kB |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
grep '^compare ' "$out" | while read -r line; do
  echo "| $(field workload "$line") | $(field ref "$line") | $(field cand_qps "$line") | $(field ref_qps "$line") | $(field qps_ratio "$line") | $(field cand_cpu_us_per_q "$line") | $(field ref_cpu_us_per_q "$line") | $(field cpu_ratio "$line") | $(field cpu_ratio_rounds "$line") | $(field cand_p99_ms "$line") | $(field ref_p99_ms "$line") | $(field cand_rss_kb "$line") | $(field ref_rss_kb "$line") |"
done
if [[ -s "$out.startup" ]]; then
  echo
  echo "| peer (1,000,054 names) | startup s | first answer s | RSS idle kB | RSS kB |"
  echo "|---|---:|---:|---:|---:|"
  while read -r line; do
    echo "| $(field peer " $line") | $(field startup_s "$line") | $(field first_answer_s "$line") | $(field rss_idle_kb "$line") | $(field rss_kb "$line") |"
  done <"$out.startup"
fi
echo
echo "raw lines: $out"
