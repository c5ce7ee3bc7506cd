# Sourced by the build.sh scripts of the test servers built from Go modules (MinIO, Prometheus):
#   build_go_module_binary ACTION NAME CACHE_PREFIX TOOLS_DIR MODULE PACKAGE KEY_LINE [TAGS]
# builds PACKAGE (of MODULE, pinned by TOOLS_DIR/go.mod and go.sum) into a cache outside the repository,
# keyed by those pins and KEY_LINE (the build revision and flags):
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/CACHE_PREFIX-<version>-<hash>/bin/NAME
# ACTION "build" builds it when missing (a second run is a fast no-op); "--print-bin" prints its path.

build_go_module_binary() {
  local action="$1" name="$2" prefix="$3" tools="$4" module="$5" package="$6" key_line="$7" tags="${8:-}"
  local version pins_hash out binary
  version="$(awk -v m="$module" '$1 == "require" && $2 == m { print $3; exit }' "$tools/go.mod")"
  pins_hash="$( (echo "$key_line"; cat "$tools/go.mod" "$tools/go.sum") | sha256sum | cut -c1-12)"
  out="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/${prefix}-${version}-${pins_hash}"
  binary="$out/bin/$name"

  case "$action" in
    --print-bin) echo "$binary"; return 0 ;;
    build) ;;
    *) echo "usage: build.sh [--print-bin]" >&2; return 2 ;;
  esac
  if [[ -x "$binary" ]]; then
    echo "$name up to date: $binary" >&2
    return 0
  fi

  local go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
  [[ -x "$go" ]] || { echo "go not found (set GO=/path/to/go)" >&2; return 1; }
  export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0

  mkdir -p "$out/bin"
  if command -v flock >/dev/null; then  # one build at a time per cache entry
    exec 9>"$out/.build.lock"
    flock 9
    [[ -x "$binary" ]] && return 0
  fi
  local stage
  stage="$(mktemp -d "$out/.stage.XXXXXX")"
  echo "building $name $version into $out (several minutes the first time)" >&2
  if ! (cd "$tools" && "$go" build -p "${SLIMSERVE_BUILD_JOBS:-2}" ${tags:+-tags "$tags"} -trimpath -ldflags "-s -w" \
      -o "$stage/$name" "$package"); then
    rm -rf "$stage"
    return 1
  fi
  mv "$stage/$name" "$binary"
  rm -rf "$stage"
  echo "built $binary" >&2
}
