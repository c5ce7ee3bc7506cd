//go:build tools

// Package tools pins the Kubernetes node commands that tests/cluster/build.sh
// compiles for the real node of the test cluster (tests/realnode). It requires
// the same k8s.io/kubernetes version as ../kubernetes (build.sh checks that);
// its own go.sum holds the node's extra modules, so the control plane's pins
// and cache key stay as they are.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
