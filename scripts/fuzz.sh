#!/usr/bin/env bash
# Fuzzes every wire decoder of zorgmesh-protocol with cargo-fuzz (libFuzzer), each target for
# a bounded time. Installs cargo-fuzz when it is missing; needs a nightly toolchain.
# Usage: scripts/fuzz.sh [seconds per target]   (CI: 20; for >= 10 million executions per
#        decoder on 2 cores: 900)
# Prints the executions per target; exits non-zero on a crash (the input is kept under
# protocol/fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/../protocol"
seconds="${1:-20}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
cargo +nightly fuzz build -O
targets=$(cargo +nightly fuzz list)
status=0
for target in $targets; do
  log=$(mktemp)
  if cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
    echo "fuzz $target: ${runs:-?} executions in ${seconds} s, no crash"
  else
    echo "fuzz $target: CRASH" >&2
    tail -40 "$log" >&2
    status=1
  fi
  rm -f "$log"
done
exit "$status"
