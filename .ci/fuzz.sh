#!/usr/bin/env bash
# Fuzz smoke: every cargo-fuzz target builds and runs FUZZ_SECONDS (default 20) from the committed
# corpus with no crash. New inputs go to a scratch directory, so the committed corpus stays as it is.
# Installs the nightly toolchain and cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fmt --check
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target"
  if ! cargo +nightly fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="${FUZZ_SECONDS:-20}" -print_final_stats=1 > "$scratch/$target.log" 2>&1; then
    tail -60 "$scratch/$target.log" >&2
    echo "fuzz target $target failed" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$target.log" | sed "s/^/$target: /"
done
