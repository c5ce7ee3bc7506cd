#!/usr/bin/env bash
# Installs what the real node of the test cluster (tests/realnode) runs on, from Debian's packages, when missing:
# containerd (the CRI runtime the kubelet talks to), runc, the CNI plugins (bridge, host-local, portmap,
# loopback), conntrack and iptables (kube-proxy). The kubelet and kube-proxy themselves come from
# tests/cluster/build.sh. Nothing is started or enabled here: the test runs its own containerd with its own
# configuration and state directories. A second run only checks and exits.
set -euo pipefail

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
for plugin in bridge host-local portmap loopback; do
  [[ -x /usr/lib/cni/$plugin ]] || { need+=(containernetworking-plugins); break; }
done
command -v conntrack >/dev/null || need+=(conntrack)
command -v iptables >/dev/null || need+=(iptables)
if [[ ${#need[@]} -gt 0 ]]; then
  sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
echo "node runtime: $(containerd --version 2>/dev/null | cut -d' ' -f3), runc $(runc --version 2>/dev/null | awk 'NR==1{print $3}')" >&2
