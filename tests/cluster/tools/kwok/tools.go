//go:build tools

// Package tools pins the kwok commands that tests/cluster/build.sh compiles
// for the local test cluster.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
