#!/usr/bin/env bash
# Build the operator image, load it into the kind cluster, and install the chart with it.
# Cannot run on the development machine (no container engine there); see README.md here.
#
#   e2e/kind/install-chart.sh          # then: e2e/kind/run-e2e.sh  (the cluster tests against kind)
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER_NAME=${DSPOOL_KIND_CLUSTER:-dspool-e2e}
IMAGE=${DSPOOL_IMAGE:-dspool/operator:dev}
HELM=${HELM:-$(.venv/bin/python e2e/tools.py path helm)}

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "install-chart.sh needs $tool on PATH" >&2; exit 2; }
done
kind get clusters | grep -qx "$CLUSTER_NAME" || kind create cluster --name "$CLUSTER_NAME" --config e2e/kind/cluster.yaml --wait 180s

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"
kubectl --context "kind-$CLUSTER_NAME" create namespace dspool-system --dry-run=client -o yaml \
  | kubectl --context "kind-$CLUSTER_NAME" apply -f -
kubectl --context "kind-$CLUSTER_NAME" label namespace dspool-system pod-security.kubernetes.io/enforce=restricted --overwrite
"$HELM" --kube-context "kind-$CLUSTER_NAME" upgrade --install dspool charts/dspool -n dspool-system \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set 'watchNamespaces={dspool-demo}' --wait --timeout 5m  # not the tests' namespaces: they run their own operators
kubectl --context "kind-$CLUSTER_NAME" -n dspool-system rollout status deployment/dspool
kubectl --context "kind-$CLUSTER_NAME" -n dspool-system logs deployment/dspool --tail=20
