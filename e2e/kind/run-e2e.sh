#!/usr/bin/env bash
# Run the cluster tests (pytest -m cluster) against a kind cluster instead of the local control plane.
#
# Needs Docker and kind on PATH, and the venv (make venv). The workers are real kubelets; they are
# dressed as the first nodes of examples/pools/small.yaml (GPU Feature Discovery labels, the
# nvidia.com/gpu taint and an nvidia.com/gpu capacity patched into node status), so the tests'
# scheduling assertions hold without GPUs. Pods run the pause image that kind nodes already have.
#
#   e2e/kind/run-e2e.sh            # create (or reuse) the kind cluster, dress nodes, run the tests
#   DSPOOL_KIND_DELETE=1 e2e/kind/run-e2e.sh   # also delete the kind cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER_NAME=${DSPOOL_KIND_CLUSTER:-dspool-e2e}
KUBECONFIG_FILE=${DSPOOL_KIND_KUBECONFIG:-${TMPDIR:-/tmp}/dspool-kind-${CLUSTER_NAME}.kubeconfig}
PYTHON=${PYTHON:-.venv/bin/python}
POOL_FILE=examples/pools/small.yaml

for tool in docker kind; do
  command -v "$tool" >/dev/null || { echo "run-e2e.sh needs $tool on PATH" >&2; exit 2; }
done
[ -x "$PYTHON" ] || { echo "no $PYTHON; run 'make venv' first" >&2; exit 2; }

if ! kind get clusters | grep -qx "$CLUSTER_NAME"; then
  kind create cluster --name "$CLUSTER_NAME" --config e2e/kind/cluster.yaml --wait 180s
fi
kind get kubeconfig --name "$CLUSTER_NAME" > "$KUBECONFIG_FILE"

# Dress the workers as accelerator servers; prints the pool label value the tests must use.
POOL_NAME=$("$PYTHON" - "$KUBECONFIG_FILE" "$POOL_FILE" <<'PY'
import sys

from kubernetes import client, config

from dspool.sim.fleet import load_pool
from dspool.sim.apply import adopt_nodes

kubeconfig, pool_file = sys.argv[1], sys.argv[2]
core_v1 = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
workers = sorted(
    node.metadata.name
    for node in core_v1.list_node().items
    if "node-role.kubernetes.io/control-plane" not in (node.metadata.labels or {})
)
pool = load_pool(pool_file)
adopt_nodes(core_v1, pool, workers)
print(pool.name)
PY
)

status=0
DSPOOL_KUBECONFIG="$KUBECONFIG_FILE" DSPOOL_EXISTING_POOL="$POOL_NAME" \
  "$PYTHON" -m pytest -q tests -m cluster "$@" || status=$?

if [ "${DSPOOL_KIND_DELETE:-0}" = 1 ]; then
  kind delete cluster --name "$CLUSTER_NAME"
fi
exit "$status"
