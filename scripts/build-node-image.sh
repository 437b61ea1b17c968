#!/usr/bin/env bash
# Builds the node container image: a root filesystem holding nothing but the zorgmesh binary
# and the few shared libraries it links (the C library, its loader, libm, libgcc_s), imported
# as one image (no base image, no registry, no builder intermediates to clean up).
# The binary is the workspace's own debug build, the one the test suite just built, so the
# image costs no second compile.
# Usage: scripts/build-node-image.sh [image-tag]   (default zorgmesh-node:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-zorgmesh-node:dev}"
cargo build --quiet --bin zorgmesh
binary=target/debug/zorgmesh
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
objcopy --strip-debug "$binary" "$rootfs/zorgmesh"
# Every library the dynamic loader resolves, and the loader itself, at the paths it expects.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | while read -r library; do
  mkdir -p "$rootfs$(dirname "$library")"
  cp -L "$library" "$rootfs$library"
done
tar -C "$rootfs" -c . | docker import --change 'ENTRYPOINT ["/zorgmesh"]' - "$tag" >/dev/null
echo "built image $tag"
