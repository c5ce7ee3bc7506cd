#!/usr/bin/env bash
# Builds the Prometheus server the autoscaling query tests scrape `slimserve serve` with
# (github.com/prometheus/prometheus, cmd/prometheus), pinned by tests/prometheus/tools/prometheus/go.mod and go.sum.
# Service discovery is left out (tag remove_all_sd): the tests scrape static targets only.
# Output goes to a cache outside the repository, keyed by those pins:
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/prometheus-<version>-<hash>/bin/prometheus
# The binary is rebuilt only when it is missing, so a second run is a fast no-op.
#
# Usage: build.sh                  build it when missing
#        build.sh --print-bin       print the binary's path and exit (builds nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools/prometheus"
BUILD_REV=1  # bump when the flags below change the binary
BUILD_TAGS="remove_all_sd"

version="$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3; exit }' "$tools/go.mod")"
pins_hash="$( (echo "rev=$BUILD_REV tags=$BUILD_TAGS"; cat "$tools/go.mod" "$tools/go.sum") | sha256sum | cut -c1-12)"
cache="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}"
out="$cache/prometheus-${version}-${pins_hash}"
binary="$out/bin/prometheus"

case "${1:-}" in
  --print-bin) echo "$binary"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin]" >&2; exit 2 ;;
esac

if [[ -x "$binary" ]]; then
  echo "prometheus up to date: $binary" >&2
  exit 0
fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { echo "go not found (set GO=/path/to/go)" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0

mkdir -p "$out/bin"
if command -v flock >/dev/null; then  # one build at a time per cache entry
  exec 9>"$out/.build.lock"
  flock 9
  [[ -x "$binary" ]] && exit 0
fi
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

echo "building prometheus $version into $out (several minutes the first time)" >&2
(cd "$tools" && "$GO" build -p "${SLIMSERVE_BUILD_JOBS:-2}" -tags "$BUILD_TAGS" -trimpath -ldflags "-s -w" \
  -o "$stage/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
mv "$stage/prometheus" "$binary"
echo "built $binary" >&2
