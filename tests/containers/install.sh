#!/usr/bin/env bash
# Installs what the container tests (tests/containers, and the images the real node runs) need, from Debian's
# packages, when missing: podman, which builds and runs the images (with its recommended helpers: buildah's
# store, fuse-overlayfs, uidmap, catatonit), and mmdebstrap, which makes the local base image when no registry
# is reachable (images/local-base.sh). Nothing is started or configured: the tests and `make images` pass
# podman their own limits. A second run only checks and exits.
set -euo pipefail

need=()
command -v podman >/dev/null || need+=(podman)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [[ ${#need[@]} -gt 0 ]]; then
  sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
echo "containers: $(podman --version 2>/dev/null), mmdebstrap $(mmdebstrap --version 2>/dev/null | awk '{print $2}')" >&2
