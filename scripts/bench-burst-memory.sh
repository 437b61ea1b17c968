#!/usr/bin/env bash
# Resident memory of a node process through a burst of large Bundles, for the default
# binary (mimalloc) and, as the baseline, one built with the system allocator.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
cargo build --release -p zorgmesh-node --bin zorgmesh --no-default-features
cp target/release/zorgmesh target/bench/zorgmesh-system-malloc
cargo build --release -p zorgmesh-node --bin zorgmesh --example burst_memory
cp target/release/zorgmesh target/bench/zorgmesh-mimalloc
for binary in target/bench/zorgmesh-system-malloc target/bench/zorgmesh-mimalloc; do
  target/release/examples/burst_memory --binary "$binary"
done
