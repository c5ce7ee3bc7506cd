#!/usr/bin/env bash
# Builds the autoscaling components the real-node autoscaling tests run as host processes, each from its Go
# module pinned by tests/autoscaling/tools/<project>/go.mod and go.sum, into
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/<project>-<version>-<hash>/bin/<binary>
# only when missing, so a second run is a fast no-op:
#   metrics-server                     sigs.k8s.io/metrics-server (metrics.k8s.io, what the HPA reads)
#   keda-operator, keda-adapter        github.com/kedacore/keda/v2 (ScaledObjects; external.metrics.k8s.io)
#   keda-http-operator, -interceptor,  github.com/kedacore/http-add-on (HTTPScaledObjects; the proxy that holds a
#   -scaler                            request while its target scales from zero; the scaler KEDA asks)
#
# Usage: build.sh                  build what is missing
#        build.sh NAME...           build what is missing of those components only
#        build.sh --print-bin NAME  print NAME's path and exit (builds nothing)
#        build.sh --check           exit 0 when every binary is present, 1 otherwise
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go_module_binary.sh"
BUILD_REV=1  # bump when the build flags change the binaries

# name tools-dir module package
COMPONENTS=(
  "metrics-server metrics-server sigs.k8s.io/metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server"
  "keda-operator keda github.com/kedacore/keda/v2 github.com/kedacore/keda/v2/cmd/operator"
  "keda-adapter keda github.com/kedacore/keda/v2 github.com/kedacore/keda/v2/cmd/adapter"
  "keda-http-operator http-add-on github.com/kedacore/http-add-on github.com/kedacore/http-add-on/operator"
  "keda-http-interceptor http-add-on github.com/kedacore/http-add-on github.com/kedacore/http-add-on/interceptor"
  "keda-http-scaler http-add-on github.com/kedacore/http-add-on github.com/kedacore/http-add-on/scaler"
)

each() { # each ACTION [NAME]: ACTION for every component, or for NAME only
  local line name dir module package found=""
  for line in "${COMPONENTS[@]}"; do
    read -r name dir module package <<<"$line"
    [[ -z "${2:-}" || "$2" == "$name" ]] || continue
    found=1
    build_go_module_binary "$1" "$name" "$dir" "$here/tools/$dir" "$module" "$package" "rev=$BUILD_REV"
  done
  [[ -n "$found" ]] || { echo "no component named ${2:-}" >&2; return 2; }
}

case "${1:-}" in
  --print-bin) each --print-bin "${2:?usage: build.sh --print-bin NAME}" ;;
  --check)
    for line in "${COMPONENTS[@]}"; do
      read -r name _ <<<"$line"
      [[ -x "$(each --print-bin "$name")" ]] || exit 1
    done ;;
  "") start=$SECONDS; each build; echo "autoscaling components ready ($((SECONDS - start))s)" >&2 ;;
  -*) echo "usage: $0 [NAME...|--print-bin NAME|--check]" >&2; exit 2 ;;
  *) start=$SECONDS; for name in "$@"; do each build "$name"; done
     echo "$* ready ($((SECONDS - start))s)" >&2 ;;
esac
