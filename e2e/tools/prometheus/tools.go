//go:build tools

// Package tools pins the prometheus and promtool commands that e2e/tools.py builds from this module.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
