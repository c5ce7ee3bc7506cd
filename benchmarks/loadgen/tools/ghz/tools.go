//go:build tools

// Package tools pins the ghz gRPC load generator that benchmarks/tools.sh compiles for benchmarks/serving.py.
package tools

import (
	_ "github.com/bojand/ghz/cmd/ghz"
)
