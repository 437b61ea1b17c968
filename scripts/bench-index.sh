#!/usr/bin/env bash
# The locator index's memory, apply rate and lookup latency, against the index before the
# entry store (commit f27a857: maps of full entries), the same benchmark file run in both.
#
#   scripts/bench-index.sh [ENTRIES] [PUBLISHERS]      (default 1000000 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
baseline_commit=${ZORGMESH_INDEX_BASELINE:-f27a857}
total=${1:-1000000}
publishers=${2:-1000}
root=$PWD
work=$(mktemp -d)
cleanup() {
  git -C "$root" worktree remove --force "$work/baseline" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

git worktree add --detach --quiet "$work/baseline" "$baseline_commit"
mkdir -p "$work/baseline/protocol/benches/common"
cp protocol/benches/index_scale.rs "$work/baseline/protocol/benches/"
cp protocol/benches/common/synthetic_index.rs "$work/baseline/protocol/benches/common/"
printf '\n[[bench]]\nname = "index_scale"\nharness = false\n' >> "$work/baseline/protocol/Cargo.toml"
baseline_target="$root/target/index-baseline-$baseline_commit"
(cd "$work/baseline" && CARGO_TARGET_DIR="$baseline_target" cargo bench --quiet -p zorgmesh-protocol --bench index_scale --no-run)
cargo bench --quiet -p zorgmesh-protocol --bench index_scale --no-run

echo "== baseline ($baseline_commit)"
(cd "$work/baseline" && CARGO_TARGET_DIR="$baseline_target" cargo bench --quiet -p zorgmesh-protocol --bench index_scale -- "$total" "$publishers")
echo "== this tree"
cargo bench --quiet -p zorgmesh-protocol --bench index_scale -- "$total" "$publishers"
