//go:build tools

// Package tools pins the kwok command that e2e/cluster.py builds from this module.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
