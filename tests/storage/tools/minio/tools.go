//go:build tools

// Package tools pins the MinIO server that tests/storage/build.sh compiles for the s3:// tests.
package tools

import (
	_ "github.com/minio/minio"
)
