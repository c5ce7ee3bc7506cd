#!/usr/bin/env bash
# The native load generators of the serving benchmarks:
#   ghz     gRPC (github.com/bojand/ghz, cmd/ghz), pinned by benchmarks/loadgen/tools/ghz/go.mod and go.sum,
#           built into ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/ghz-<version>-<hash>/bin/ghz when missing
#           (the same content-keyed, locked, staged build as the test servers: tests/go_module_binary.sh);
#   h2load  HTTP/1.1 and h2c (Debian's nghttp2-client), installed with apt-get when missing.
# A second run is a fast no-op.
#
# Usage: tools.sh                  build / install what is missing
#        tools.sh --print-ghz       print ghz's path and exit (builds nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../tests/go_module_binary.sh"
BUILD_REV=1  # bump when the build flags change the binary

ghz() {
  build_go_module_binary "$1" ghz ghz "$here/loadgen/tools/ghz" \
    github.com/bojand/ghz github.com/bojand/ghz/cmd/ghz "rev=$BUILD_REV"
}

case "${1:-build}" in
  --print-ghz) ghz --print-bin; exit 0 ;;
  build) ;;
  *) echo "usage: tools.sh [--print-ghz]" >&2; exit 2 ;;
esac

ghz build
if ! command -v h2load >/dev/null; then
  sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  echo "installing h2load (Debian's nghttp2-client)" >&2
  $sudo apt-get install -y --no-install-recommends nghttp2-client >&2 \
    || { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends nghttp2-client >&2; }
fi
echo "h2load: $(command -v h2load)" >&2
