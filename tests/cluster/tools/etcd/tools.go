//go:build tools

// Package tools pins the etcd commands that tests/cluster/build.sh compiles
// for the local test cluster.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
