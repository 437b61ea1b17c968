#!/usr/bin/env bash
# Fuzzes every decoder with cargo-fuzz (libFuzzer), each target for a bounded time: the wire
# decoders of zorgmesh-protocol (protocol/fuzz) and the FHIR Bundle intake of the node
# (node/fuzz). Installs cargo-fuzz when it is missing; needs a nightly toolchain.
# Usage: scripts/fuzz.sh [seconds per target]   (CI: 20; for >= 10 million executions per
#        decoder on 2 cores: 900)
# Prints the executions per target; exits non-zero on a crash (the input is kept under
# <crate>/fuzz/artifacts/<target>/).
# A short run (under 120 s per target, as in CI) builds the node's target unoptimised and
# without AddressSanitizer: it pulls in the whole node, and that build takes 4 minutes
# instead of 10. Longer runs build every target optimised, with AddressSanitizer.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-20}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
status=0
for crate in protocol node; do
  cd "$root/$crate"
  flags=(-O)
  if [ "$crate" = node ] && [ "$seconds" -lt 120 ]; then
    flags=(--dev --sanitizer none)
  fi
  cargo +nightly fuzz build "${flags[@]}"
  for target in $(cargo +nightly fuzz list); do
    corpus=(fuzz/corpus/"$target")
    mkdir -p "${corpus[0]}"
    if [ -d fuzz/seeds/"$target" ]; then
      corpus+=(fuzz/seeds/"$target")
    fi
    log=$(mktemp)
    if cargo +nightly fuzz run "${flags[@]}" "$target" "${corpus[@]}" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
      runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
      echo "fuzz $crate/$target: ${runs:-?} executions in ${seconds} s, no crash"
    else
      echo "fuzz $crate/$target: CRASH" >&2
      tail -40 "$log" >&2
      status=1
    fi
    rm -f "$log"
  done
done
exit "$status"
