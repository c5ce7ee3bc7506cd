#!/usr/bin/env bash
# Installs what the browser-facing tests (tests/web) need, idempotently:
#   - the Node test project's packages (grpc-web, protobufjs, xhr2, playwright-core), `npm ci`'d into a cache
#     keyed by the lockfile's hash, ${SLIMSERVE_CACHE:-~/.cache/slimserve}/node-<hash>/node_modules, and
#     symlinked as tests/web/node/node_modules;
#   - Debian's Chromium (/usr/bin/chromium) and its driver, when missing. Playwright drives that binary;
#     it never downloads a browser of its own.
# A second run with nothing changed only checks and exits.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$here/node"
cache="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_install() { # apt_install PKG...: refreshes the package lists only when a package is not known yet
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "$@"; then
    as_root apt-get update
    as_root apt-get install -y --no-install-recommends "$@"
  fi
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi

key="$(cat "$project/package.json" "$project/package-lock.json" | sha256sum | cut -c1-16)"
target="$cache/node-$key"
if [[ ! -f "$target/.installed" ]]; then
  # Install into a scratch folder and move it in place, so an interrupted run never leaves a half cache.
  mkdir -p "$cache"
  scratch="$(mktemp -d "$cache/node-$key.tmp.XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  cp "$project/package.json" "$project/package-lock.json" "$scratch/"
  (cd "$scratch" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  touch "$scratch/.installed"
  rm -rf "$target"
  mv "$scratch" "$target"
  trap - EXIT
fi
ln -sfn "$target/node_modules" "$project/node_modules"
echo "node packages in $target/node_modules" >&2

if [[ ! -x /usr/bin/chromium ]]; then
  # Fonts come with chromium's own dependencies; recommends (e.g. a desktop's extras) are not needed headless.
  apt_install chromium chromium-driver
fi
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)" >&2
