#!/usr/bin/env bash
# Container fault tests: builds the node image (FROM scratch, static binary), runs the
# scenarios in tests/tests/containers.rs one at a time, and always removes what they made:
# containers, networks and the image, also when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
image="zorgmesh-node:dev"

cleanup() {
  docker ps -aq --filter "ancestor=$image" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network ls -q --filter "name=zorgmesh-" | xargs -r docker network rm >/dev/null 2>&1 || true
  docker rmi -f "$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/build-node-image.sh "$image"
# --workspace: the same dependency features as the test suite's build, so no dependency is
# built again (the containers feature only switches the test target on).
cargo test --workspace --features zorgmesh-tests/containers --test containers -- --test-threads=1 --nocapture
