#!/usr/bin/env bash
# The simulator's fidelity: one scenario run as real `zorgmesh node run` processes (each in
# its own network namespace, linked by a userspace switch that delays every packet by a fixed
# one-way latency) and in the simulator; prints and writes (target/fidelity/fidelity.md) how
# far propagation p50/p95/p99 and bytes per node differ. Needs root and iproute2.
#
#   scripts/sim-fidelity.sh [--nodes 20] [--latency-ms 10] [--updates 600] [--seconds 30] [--seed 1]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "sim-fidelity: needs root (network namespaces and TUN devices)" >&2
  exit 2
fi
command -v ip >/dev/null || { echo "sim-fidelity: needs ip (Debian package iproute2)" >&2; exit 2; }
cargo build --release --quiet --bin zorgmesh -p zorgmesh-node
cargo build --release --quiet -p zorgmesh-tests --example fidelity
exec target/release/examples/fidelity --out target/fidelity "$@"
