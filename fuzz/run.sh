#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 60 s): bash fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (cargo install cargo-fuzz). On a stable toolchain, RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  echo "== $t (${secs}s)"
  cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536
done
