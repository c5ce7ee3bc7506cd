//go:build tools

// Package tools pins the metrics-server that tests/autoscaling/build.sh compiles for the autoscaling tests.
package tools

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
