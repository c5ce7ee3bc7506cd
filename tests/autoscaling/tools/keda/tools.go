//go:build tools

// Package tools pins the KEDA operator and metrics API server that tests/autoscaling/build.sh compiles for the
// autoscaling tests.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
