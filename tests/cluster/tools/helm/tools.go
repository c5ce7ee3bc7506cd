//go:build tools

// Package tools pins the helm commands that tests/cluster/build.sh compiles
// for the local test cluster.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
