#!/usr/bin/env bash
# Builds the node container image from a statically linked zorgmesh binary.
# Usage: scripts/build-node-image.sh [image-tag]   (default zorgmesh-node:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-zorgmesh-node:dev}"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --target "$target" --bin zorgmesh
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp docker/Dockerfile "$context/"
objcopy --strip-debug "target/$target/debug/zorgmesh" "$context/zorgmesh"
docker build --quiet -t "$tag" "$context" >/dev/null
echo "built image $tag"
