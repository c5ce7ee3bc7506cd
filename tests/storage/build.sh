#!/usr/bin/env bash
# Builds the S3-compatible server the s3:// tests run on loopback: MinIO (github.com/minio/minio),
# pinned by tests/storage/tools/minio/go.mod and go.sum, into
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/s3-minio-<version>-<hash>/bin/minio
# only when it is missing, so a second run is a fast no-op.
#
# Usage: build.sh                  build it when missing
#        build.sh --print-bin       print the binary's path and exit (builds nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go_module_binary.sh"
BUILD_REV=1  # bump when the build flags change the binary

build_go_module_binary "${1:-build}" minio s3-minio "$here/tools/minio" \
  github.com/minio/minio github.com/minio/minio "rev=$BUILD_REV"
