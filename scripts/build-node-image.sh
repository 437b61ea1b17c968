#!/usr/bin/env bash
# Builds the node container image: a root filesystem holding nothing but the statically
# linked zorgmesh binary, imported as one image (no base image, no registry, no builder
# intermediates to clean up).
# Usage: scripts/build-node-image.sh [image-tag]   (default zorgmesh-node:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-zorgmesh-node:dev}"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --target "$target" --bin zorgmesh
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
objcopy --strip-debug "target/$target/debug/zorgmesh" "$rootfs/zorgmesh"
tar -C "$rootfs" -c zorgmesh | docker import --change 'ENTRYPOINT ["/zorgmesh"]' - "$tag" >/dev/null
echo "built image $tag"
