#!/usr/bin/env bash
# Builds the Prometheus server the autoscaling query tests scrape `slimserve serve` with
# (github.com/prometheus/prometheus, cmd/prometheus), pinned by tests/prometheus/tools/prometheus/go.mod and
# go.sum, into
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/prometheus-<version>-<hash>/bin/prometheus
# only when it is missing, so a second run is a fast no-op. Of service discovery only Kubernetes' is built in
# (tags remove_all_sd, enable_kubernetes_sd): the tests scrape static targets, or pods found through the test
# cluster's API server.
#
# Usage: build.sh                  build it when missing
#        build.sh --print-bin       print the binary's path and exit (builds nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go_module_binary.sh"
BUILD_REV=1  # bump when the build flags change the binary
BUILD_TAGS="remove_all_sd,enable_kubernetes_sd"

build_go_module_binary "${1:-build}" prometheus prometheus "$here/tools/prometheus" \
  github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/prometheus \
  "rev=$BUILD_REV tags=$BUILD_TAGS" "$BUILD_TAGS"
