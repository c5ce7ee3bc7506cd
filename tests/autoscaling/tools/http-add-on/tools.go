//go:build tools

// Package tools pins the KEDA HTTP add-on (operator, interceptor, scaler) that tests/autoscaling/build.sh compiles
// for the scale-from-zero tests.
package tools

import (
	_ "github.com/kedacore/http-add-on/interceptor"
	_ "github.com/kedacore/http-add-on/operator"
	_ "github.com/kedacore/http-add-on/scaler"
)
