#!/usr/bin/env bash
# Builds the S3-compatible server the s3:// tests run on loopback: MinIO (github.com/minio/minio),
# pinned by tests/storage/tools/minio/go.mod and go.sum.
# Output goes to a cache outside the repository, keyed by those pins:
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/s3-minio-<version>-<hash>/bin/minio
# The binary is rebuilt only when it is missing, so a second run is a fast no-op.
#
# Usage: build.sh                  build it when missing
#        build.sh --print-bin       print the binary's path and exit (builds nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools/minio"
BUILD_REV=1  # bump when the flags below change the binary

version="$(awk '$1 == "require" && $2 == "github.com/minio/minio" { print $3; exit }' "$tools/go.mod")"
pins_hash="$( (echo "rev=$BUILD_REV"; cat "$tools/go.mod" "$tools/go.sum") | sha256sum | cut -c1-12)"
cache="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}"
out="$cache/s3-minio-${version}-${pins_hash}"
binary="$out/bin/minio"

case "${1:-}" in
  --print-bin) echo "$binary"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin]" >&2; exit 2 ;;
esac

if [[ -x "$binary" ]]; then
  echo "minio up to date: $binary" >&2
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

echo "building minio $version into $out (a few minutes the first time)" >&2
(cd "$tools" && "$GO" build -p "${SLIMSERVE_BUILD_JOBS:-2}" -trimpath -ldflags "-s -w" -o "$stage/minio" github.com/minio/minio)
mv "$stage/minio" "$binary"
echo "built $binary" >&2
