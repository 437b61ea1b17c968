#!/usr/bin/env bash
# The cost and the gain of the search index, side by side:
#  1. ingest throughput (resources/s, transactions of 100 Observations) of this tree against
#     the build before the index (commit 74bb031), the same benchmark file run in both;
#  2. patient-scoped search latency on this tree, from the index and by a full scan;
#  3. the index's size per resource.
#
#   scripts/bench-search.sh [OBSERVATIONS] [ROUNDS]      (default 100000 2)
set -euo pipefail
cd "$(dirname "$0")/.."
baseline_commit=${ZORGMESH_SEARCH_BASELINE:-74bb031}
total=${1:-100000}
rounds=${2:-2}
root=$PWD
work=$(mktemp -d)
cleanup() {
  git -C "$root" worktree remove --force "$work/baseline" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== the ingest benchmark in this tree and in the baseline ($baseline_commit)"
git worktree add --detach --quiet "$work/baseline" "$baseline_commit"
mkdir -p "$work/baseline/node/benches/common"
cp node/benches/ingest.rs "$work/baseline/node/benches/"
cp node/benches/common/observations.rs "$work/baseline/node/benches/common/"
printf '\n[[bench]]\nname = "ingest"\nharness = false\n' >> "$work/baseline/node/Cargo.toml"
baseline_target="$root/target/search-baseline-$baseline_commit"
(cd "$work/baseline" && CARGO_TARGET_DIR="$baseline_target" cargo bench --quiet -p zorgmesh-node --bench ingest --no-run)
cargo bench --quiet -p zorgmesh-node --bench ingest --no-run
cargo bench --quiet -p zorgmesh-node --bench search_latency --no-run

for round in $(seq "$rounds"); do
  printf 'baseline round %s: ' "$round"
  (cd "$work/baseline" && CARGO_TARGET_DIR="$baseline_target" cargo bench --quiet -p zorgmesh-node --bench ingest -- "$total" 100)
  printf 'indexed  round %s: ' "$round"
  cargo bench --quiet -p zorgmesh-node --bench ingest -- "$total" 100
done

echo "== search on $total Observations"
cargo bench --quiet -p zorgmesh-node --bench search_latency -- "$total" 1000 3
