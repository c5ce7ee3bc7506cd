#!/usr/bin/env bash
# The native load generators of the serving benchmarks:
#   ghz     gRPC (github.com/bojand/ghz, cmd/ghz), pinned by benchmarks/loadgen/tools/ghz/go.mod and go.sum,
#           built into ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/ghz-<version>-<hash>/bin/ghz when missing
#           (the same content-keyed, locked, staged build as the test servers: tests/go_module_binary.sh);
#   h2load  HTTP/1.1 and h2c (Debian's nghttp2-client), installed with apt-get when missing;
#   perf_analyzer  OpenAI streaming (the generation benchmark), on x86-64 only: the binary of the wheels pinned
#           with their hashes in benchmarks/loadgen/tools/perf_analyzer/requirements.txt, unpacked into
#           ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/perf-analyzer-<version>-<hash>/ (bin/perf_analyzer runs it
#           with the CUDA runtime library beside it), and Debian's libb64-0d, which it links.
# A second run is a fast no-op.
#
# Usage: tools.sh                          build / install what is missing
#        tools.sh --print-ghz               print ghz's path and exit (builds nothing)
#        tools.sh --print-perf-analyzer     print perf_analyzer's path and exit (installs nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../tests/go_module_binary.sh"
BUILD_REV=1  # bump when the build flags change the binary
PERF_ANALYZER_REV=1  # bump when the unpacked layout changes
perf_analyzer_pins="$here/loadgen/tools/perf_analyzer/requirements.txt"
perf_analyzer_dir="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/perf-analyzer-$(
  sed -n 's/^tritonclient==\([^ ]*\).*/\1/p' "$perf_analyzer_pins")-$(
  (echo "rev=$PERF_ANALYZER_REV"; cat "$perf_analyzer_pins") | sha256sum | cut -c1-12)"

ghz() {
  build_go_module_binary "$1" ghz ghz "$here/loadgen/tools/ghz" \
    github.com/bojand/ghz github.com/bojand/ghz/cmd/ghz "rev=$BUILD_REV"
}

apt_install() {  # Debian packages, the package index refreshed only when a first try fails
  local sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo apt-get install -y --no-install-recommends "$@" >&2 \
    || { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends "$@" >&2; }
}

perf_analyzer() {
  local bin="$perf_analyzer_dir/bin/perf_analyzer"
  [[ -x "$bin" ]] && { echo "perf_analyzer up to date: $bin" >&2; return 0; }
  mkdir -p "$perf_analyzer_dir"
  exec 8>"$perf_analyzer_dir/.install.lock"
  flock 8
  [[ -x "$bin" ]] && return 0
  local stage
  stage="$(mktemp -d "$perf_analyzer_dir/.stage.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT  # a failed download leaves nothing behind
  echo "installing perf_analyzer into $perf_analyzer_dir" >&2
  # The pinned wheels, checked against their hashes; only the binary and the library are kept.
  "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$perf_analyzer_pins" -d "$stage/wheels" >&2
  "${PYTHON:-python3}" - "$stage" <<'UNPACK'
import sys, zipfile
from pathlib import Path

stage = Path(sys.argv[1])
wanted = {"perf_analyzer": stage / "libexec", "libcudart.so.12": stage / "lib"}
for wheel in (stage / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            base = name.rsplit("/", 1)[-1]
            if base in wanted and (name.endswith("/bin/perf_analyzer") or "/lib/" in name):
                wanted[base].mkdir(exist_ok=True)
                (wanted[base] / base).write_bytes(archive.read(name))
                (wanted[base] / base).chmod(0o755)
missing = [name for name, folder in wanted.items() if not (folder / name).is_file()]
sys.exit(f"not in the wheels: {missing}" if missing else 0)
UNPACK
  mkdir -p "$stage/bin"
  cat >"$stage/bin/perf_analyzer" <<'WRAPPER'
#!/bin/sh
# perf_analyzer with the CUDA runtime library it links (loaded, never used: the benchmarks run no GPU).
here="$(dirname "$(readlink -f "$0")")/.."
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/libexec/perf_analyzer" "$@"
WRAPPER
  chmod 755 "$stage/bin/perf_analyzer"
  rm -rf "$stage/wheels" "$perf_analyzer_dir/lib" "$perf_analyzer_dir/libexec"
  mv "$stage/lib" "$stage/libexec" "$perf_analyzer_dir/"
  mv "$stage/bin" "$perf_analyzer_dir/bin"  # last: its presence means installed
  rm -rf "$stage"
  trap - EXIT
}

case "${1:-build}" in
  --print-ghz) ghz --print-bin; exit 0 ;;
  --print-perf-analyzer) echo "$perf_analyzer_dir/bin/perf_analyzer"; exit 0 ;;
  build) ;;
  *) echo "usage: tools.sh [--print-ghz | --print-perf-analyzer]" >&2; exit 2 ;;
esac

ghz build
if ! command -v h2load >/dev/null; then
  echo "installing h2load (Debian's nghttp2-client)" >&2
  apt_install nghttp2-client
fi
echo "h2load: $(command -v h2load)" >&2
if [[ "$(uname -m)" == x86_64 ]]; then
  [[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ]] || { echo "installing libb64-0d for perf_analyzer" >&2; apt_install libb64-0d; }
  perf_analyzer
else
  echo "perf_analyzer: no build for $(uname -m); the generation benchmark uses its Python client alone" >&2
fi
