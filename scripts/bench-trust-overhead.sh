#!/usr/bin/env bash
# The cost of trust on the resolve path: $dossier latency (p50, p90, p99) on the demo mesh
# with client authentication, requester claims, consent at the holder and the access trail,
# against the same mesh and workload before any of them (commit 55b2222, the last before
# issue 8), release builds side by side, alternating rounds.
#
#   scripts/bench-trust-overhead.sh [REQUESTS] [ROUNDS]      (default 300 2)
set -euo pipefail
cd "$(dirname "$0")/.."
baseline_commit=${ZORGMESH_BASELINE:-55b2222}
requests=${1:-300}
rounds=${2:-2}
root=$PWD
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  git -C "$root" worktree remove --force "$work/baseline" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== release builds: this tree and the baseline ($baseline_commit)"
cargo build --release --quiet --bin zorgmesh
baseline_target="$root/target/trust-baseline-$baseline_commit"
baseline="$baseline_target/release/zorgmesh"
if [ ! -x "$baseline" ]; then
  git worktree add --detach --quiet "$work/baseline" "$baseline_commit"
  (cd "$work/baseline" && CARGO_TARGET_DIR="$baseline_target" cargo build --release --quiet --bin zorgmesh)
fi
cargo bench --quiet -p zorgmesh-node --bench dossier_latency --no-run
current="$root/target/release/zorgmesh"

# measure NAME BINARY ROUND: a demo mesh of BINARY (same seed, same patients), $dossier at
# erasmusmc for patients found at umcg.
measure() {
  local name=$1 bin=$2 round=$3
  local dir="$work/$name-$round"
  "$bin" demo --keep-running --dir "$dir" --resolve 0 > "$dir.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local deadline=$((SECONDS + 120))
  until grep -q "press ctrl-c" "$dir.log"; do
    if [ "$SECONDS" -gt "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      cat "$dir.log" >&2
      echo "error: the $name mesh did not come up" >&2
      exit 1
    fi
    sleep 0.2
  done
  local search resolve
  search=$(awk '/FHIR base URLs/ {f = 1; next} f && $1 == "umcg" {print $2; exit}' "$dir.log")
  resolve=$(awk '/FHIR base URLs/ {f = 1; next} f && $1 == "erasmusmc" {print $2; exit}' "$dir.log")
  local tokens=()
  if [ -f "$dir/nodes/umcg/demo-ehr.credentials.json" ]; then
    tokens=("$("$bin" client token --credentials "$dir/nodes/umcg/demo-ehr.credentials.json")"
            "$("$bin" client token --credentials "$dir/nodes/erasmusmc/demo-ehr.credentials.json")")
  fi
  printf '%-8s round %s: ' "$name" "$round"
  cargo bench --quiet -p zorgmesh-node --bench dossier_latency -- "$search" "$resolve" "$requests" "${tokens[@]}"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

echo "== $requests dossiers per run, one at a time"
for round in $(seq "$rounds"); do
  measure baseline "$baseline" "$round"
  measure current "$current" "$round"
done
