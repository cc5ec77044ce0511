//go:build tools

// Package tools pins the LeaderWorkerSet controller that e2e/tools.py builds from this module.
package tools

import _ "sigs.k8s.io/lws/cmd"
