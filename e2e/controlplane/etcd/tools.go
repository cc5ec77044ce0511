//go:build tools

// Package tools pins the etcd server command that e2e/cluster.py builds from this module.
package tools

import _ "go.etcd.io/etcd/server/v3"
