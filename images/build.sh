#!/bin/bash
# Build one image of images/Dockerfile unless the engine already holds it, keyed by content: the tag
# `content-<key>` names a hash of everything that goes into it (the files the build context admits:
# Dockerfile, lock, install scripts, pyproject.toml, the package sources; the build arguments that change
# what is built; the base image's id). A warm rebuild with nothing changed is then a tag, not a build: the
# engine's own layer cache still costs minutes, checking a cached COPY of the torch venvs by hashing them.
# The user-facing tag is pointed at the content-tagged image either way. Prints the content-tagged
# reference on stdout (the build's own output goes to stderr).
#   images/build.sh ENGINE REPOSITORY TAG [BUILD OPTIONS...]    (make images; run from the repository root)
set -euo pipefail
engine=$1 repository=$2 tag=$3
shift 3

# The context as images/Dockerfile.dockerignore admits it, minus what it excludes.
context_files() {
  find pyproject.toml README.md operator images/Dockerfile images/Dockerfile.dockerignore \
    images/requirements.py images/requirements.lock images/install-locked.sh \
    -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path 'operator/*.egg-info/*' -print0 | sort -z
}

# The build's options, but those that only label it (the revision and time of the build: a new commit with
# the same content is the same image), and the base image's id where the engine holds it.
key_options() {
  local option base=python:3.11-slim-bookworm
  for option in "$@"; do
    case $option in
      REVISION=* | CREATED=*) ;;
      *) printf '%s\n' "$option" ;;
    esac
    case $option in PYTHON_IMAGE=*) base=${option#PYTHON_IMAGE=} ;; esac
  done
  printf 'base %s %s\n' "$base" "$("$engine" image inspect --format '{{.Id}}' "$base" 2>/dev/null || true)"
}

key=$( { context_files | xargs -0 sha256sum; key_options "$@"; } | sha256sum | cut -c1-16)
content_ref=$repository:content-$key
if "$engine" image inspect "$content_ref" >/dev/null 2>&1; then
  echo "$repository:$tag: up to date ($content_ref)" >&2
else
  echo "$engine build $* -t $content_ref -t $repository:$tag ." >&2
  "$engine" build "$@" -t "$content_ref" . >&2
fi
"$engine" tag "$content_ref" "$repository:$tag"
echo "$content_ref"
