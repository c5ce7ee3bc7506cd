#!/bin/sh
# The base image for machines that reach Debian's archive but no container registry: Debian bookworm's Python
# 3.11, callable as `python`, with venv (and the pip wheel it bundles), as the Dockerfile's builder stage
# expects of the official python image. Made with mmdebstrap and imported into the engine, once per content of
# this file: the tarball is kept in ${SLIMSERVE_CACHE:-~/.cache/slimserve}/images.
#   images/local-base.sh ENGINE IMAGE     (the Makefile's BASE=local names IMAGE after this file's hash)
set -eu
engine=$1
image=$2
packages=python3,python3-venv,python-is-python3,ca-certificates

if "$engine" image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
cache=${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/images
tarball=$cache/$(echo "$image" | tr '/:' '__').tar
if [ ! -s "$tarball" ]; then
  mkdir -p "$cache"
  # minbase: no init system, no documentation; the apt lists are dropped, so the image does not carry them.
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$cache/partial.tar" \
    "deb http://deb.debian.org/debian bookworm bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mv "$cache/partial.tar" "$tarball"
fi
"$engine" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$image" >/dev/null
