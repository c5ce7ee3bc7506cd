//go:build tools

// Package tools pins the Prometheus server that tests/prometheus/build.sh compiles for the autoscaling query tests.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
