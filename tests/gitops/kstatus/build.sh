#!/usr/bin/env bash
# Builds the kstatus command (main.go) into a cache outside the repository, keyed by its sources, and
# prints the binary's path. A second run with the same sources only prints the path.
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/kstatus-<hash>/kstatus
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
out="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/kstatus-$key"
if [[ ! -x "$out/kstatus" ]]; then
  GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
  [[ -x "$GO" ]] || { echo "go not found (set GO=/path/to/go)" >&2; exit 1; }
  mkdir -p "$out"
  stage="$(mktemp -d "$out/.stage.XXXXXX")"  # two test workers may build it at once: each in its own folder
  (cd "$here" && GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 \
    "$GO" build -trimpath -ldflags="-s -w" -o "$stage/kstatus" .) || { rm -rf "$stage"; exit 1; }
  mv "$stage/kstatus" "$out/kstatus"
  rm -rf "$stage"
fi
echo "$out/kstatus"
