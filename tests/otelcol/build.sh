#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the tracing tests export spans to: the OTLP receiver and the contrib file
# exporter only (tests/otelcol/tools/otelcol/main.go), every collector module at one release, pinned by that
# folder's go.mod and go.sum, into
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/otelcol-<version>-<hash>/bin/otelcol
# only when it is missing, so a second run is a fast no-op.
#
# Usage: build.sh                  build it when missing
#        build.sh --print-bin       print the binary's path and exit (builds nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go_module_binary.sh"
BUILD_REV=1  # bump when the build flags or main.go change the binary

build_go_module_binary "${1:-build}" otelcol otelcol "$here/tools/otelcol" \
  go.opentelemetry.io/collector/otelcol . "rev=$BUILD_REV main=$(sha256sum "$here/tools/otelcol/main.go" | cut -c1-12)"
