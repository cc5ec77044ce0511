//go:build tools

// Package tools pins the helm command that e2e/tools.py builds from this module.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
