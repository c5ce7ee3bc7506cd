#!/usr/bin/env bash
# Builds the binaries of the local test cluster from their Go modules:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes)
#   etcd (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok), helm (helm.sh/helm/v3)
#   kubelet, kube-proxy (k8s.io/kubernetes, the same version) for the real node (tests/realnode)
#
# Versions are pinned by the go.mod/go.sum files under tests/cluster/tools/<project>/.
# Output goes to a cache outside the repository, keyed by those pins:
#   ${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}/cluster-<key>/bin/
# A binary is rebuilt only when it is missing, so a second run is a fast no-op.
#
# The node's binaries have their own pins (tools/node: kubelet and kube-proxy need modules the control plane does
# not) and their own cache entry, so that adding or bumping them leaves the control plane's cache valid.
#
# Usage: build.sh                       build what is missing
#        build.sh --print-bin-dir       print the bin directory and exit (builds nothing)
#        build.sh --print-node-bin-dir  print the node's bin directory and exit (builds nothing)
#        build.sh --check               exit 0 when every binary is present, 1 otherwise
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"

# Bump when the build flags below change in a way that changes the binaries.
BUILD_REV=1

pin() { # pin <tools dir> <module path>: the version that dir's go.mod requires
  awk -v m="$2" '$1 == "require" && $2 == m { print $3; exit } $1 == m { print $2; exit }' "$tools/$1/go.mod"
}

K8S_VERSION="$(pin kubernetes k8s.io/kubernetes)"
ETCD_VERSION="$(pin etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(pin kwok sigs.k8s.io/kwok)"
HELM_VERSION="$(pin helm helm.sh/helm/v3)"
NODE_K8S_VERSION="$(pin node k8s.io/kubernetes)"
if [[ "$NODE_K8S_VERSION" != "$K8S_VERSION" ]]; then
  echo "tools/node pins k8s.io/kubernetes $NODE_K8S_VERSION, tools/kubernetes $K8S_VERSION: pin the same" >&2
  exit 1
fi

# The key names the upstream versions and hashes every pin (go.mod + go.sum) and the flags.
pins_hash="$( (echo "rev=$BUILD_REV"; for d in kubernetes etcd kwok helm; do cat "$tools/$d/go.mod" "$tools/$d/go.sum"; done) \
  | sha256sum | cut -c1-12)"
key="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}-${pins_hash}"
cache="${SLIMSERVE_CACHE:-$HOME/.cache/slimserve}"
out="$cache/cluster-$key"
bin="$out/bin"
node_hash="$( (echo "rev=$BUILD_REV"; cat "$tools/node/go.mod" "$tools/node/go.sum") | sha256sum | cut -c1-12)"
node_bin="$cache/cluster-node-k8s-${K8S_VERSION}-${node_hash}/bin"

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
NODE_BINARIES=(kubelet kube-proxy)

missing() { # missing NAME...: those not in their bin directory
  local b
  for b in "$@"; do
    case "$b" in
      kubelet|kube-proxy) [[ -x "$node_bin/$b" ]] || echo "$b" ;;
      *) [[ -x "$bin/$b" ]] || echo "$b" ;;
    esac
  done
}

case "${1:-}" in
  --print-bin-dir) echo "$bin"; exit 0 ;;
  --print-node-bin-dir) echo "$node_bin"; exit 0 ;;
  --check) [[ -z "$(missing "${BINARIES[@]}" "${NODE_BINARIES[@]}")" ]]; exit $? ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--print-node-bin-dir|--check]" >&2; exit 2 ;;
esac

if [[ -z "$(missing "${BINARIES[@]}" "${NODE_BINARIES[@]}")" ]]; then
  echo "cluster binaries up to date in $bin and $node_bin" >&2
  exit 0
fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { echo "go not found (set GO=/path/to/go)" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0
# Default GOPATH/GOMODCACHE/GOCACHE (they persist across runs) unless the caller set them.

mkdir -p "$bin" "$node_bin"
# One build at a time per cache entry; a waiting build re-checks what is missing.
if command -v flock >/dev/null; then
  exec 9>"$out/.build.lock"
  flock 9
fi

jobs="${SLIMSERVE_BUILD_JOBS:-2}"
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

build() { # build <tools dir> <ldflags> <binary=package>...
  local dir="$1" ldflags="$2"; shift 2
  local into="$bin"
  [[ "$dir" != node ]] || into="$node_bin"
  local want=() pkgs=() spec name
  for spec in "$@"; do
    name="${spec%%=*}"
    if [[ -n "$(missing "$name")" ]]; then want+=("$name"); pkgs+=("${spec#*=}"); fi
  done
  [[ ${#want[@]} -gt 0 ]] || return 0
  echo ">> building ${want[*]} (${dir})" >&2
  local start=$SECONDS
  # With one package, -o names the file; with several, go names each after its package.
  local dest="$stage/"
  [[ ${#pkgs[@]} -gt 1 ]] || dest="$stage/${want[0]}"
  (cd "$tools/$dir" && "$GO" build -p "$jobs" -trimpath -tags selinux,notest \
      -ldflags "-s -w $ldflags" -o "$dest" "${pkgs[@]}")
  for name in "${want[@]}"; do
    [[ -x "$stage/$name" ]] || { echo "expected $stage/$name after build" >&2; exit 1; }
    mv -f "$stage/$name" "$into/$name"
  done
  echo ">> built ${want[*]} in $((SECONDS - start))s" >&2
}

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean"
done

total=$SECONDS
build kubernetes "$k8s_ldflags" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kubectl=k8s.io/kubernetes/cmd/kubectl
# The etcd main package is the root of the go.etcd.io/etcd/server/v3 module.
build etcd "" etcd=go.etcd.io/etcd/server/v3
build kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" kwok=sigs.k8s.io/kwok/cmd/kwok
build helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm
build node "$k8s_ldflags" \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy

left="$(missing "${BINARIES[@]}" "${NODE_BINARIES[@]}")"
if [[ -n "$left" ]]; then echo "still missing: $left" >&2; exit 1; fi
echo "cluster binaries ready in $bin and $node_bin ($((SECONDS - total))s)" >&2
