#!/usr/bin/env python3
"""`make demo`: the operator on a simulated enterprise pool, end to end, on the local control plane.

Brings up the control plane (building it once), applies examples/pools/enterprise-mixed.yaml (fake
KWOK nodes with real GPU/NPU labels and capacity), installs the CRD, starts `dspool run`, applies several
DeepSeekDeployments from examples/, waits until each settles, and prints where everything landed.
The cluster stays up afterwards (`make cluster-down` removes it); the operator is stopped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from dspool import api
from dspool.report import format_table
from dspool.sim.apply import apply_pool, install_crd
from dspool.sim.fleet import load_pool

REPO = Path(__file__).resolve().parent.parent
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
NAMESPACE = "dspool-demo"
EXAMPLES = [
    "r1-671b.yaml",
    "v3.2.yaml",  # a current checkpoint: DeepSeek-V3.2 (sparse attention) on one H200 node
    "r1-671b-ascend-w8a8.yaml",
    "r1-distill-llama-70b.yaml",
    "r1-distill-qwen-32b.yaml",
    "r1-distill-qwen-14b.yaml",
    "r1-distill-qwen-1.5b.yaml",
    "r1-671b-ampere.yaml",
]
# The operator manages only the demo pool's nodes, whatever else the local cluster holds.
POOL_SELECTOR = "dspool.io/pool=enterprise-mixed"
METRICS_PORT = 18081
SETTLED = {"Ready", "Unschedulable", "Degraded", "Failed"}


def step(message: str) -> None:
    """Print a demo step."""
    print(f"\n==> {message}", flush=True)


def create_weights_volume(core: client.CoreV1Api) -> None:
    """The PVC examples/r1-671b.yaml mounts: a pre-provisioned volume holding the weights (statically bound)."""
    pv = client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=f"{NAMESPACE}-deepseek-r1-weights"),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "700Gi"},
            access_modes=["ReadOnlyMany"],
            storage_class_name="",
            host_path=client.V1HostPathVolumeSource(path="/data/models/DeepSeek-R1"),
            claim_ref=client.V1ObjectReference(namespace=NAMESPACE, name="deepseek-r1-weights"),
        ),
    )
    pvc = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="deepseek-r1-weights"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadOnlyMany"],
            storage_class_name="",
            volume_name=pv.metadata.name,
            resources=client.V1VolumeResourceRequirements(requests={"storage": "700Gi"}),
        ),
    )
    for create in (lambda: core.create_persistent_volume(pv),
                   lambda: core.create_namespaced_persistent_volume_claim(NAMESPACE, pvc)):  # fmt: skip
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:
                raise
    # A volume left Released by an earlier demo (its claim deleted with the namespace) binds again
    # once the old claim's uid is dropped.
    if core.read_persistent_volume(pv.metadata.name).status.phase == "Released":
        patch = {"spec": {"claimRef": {"uid": None, "resourceVersion": None}}}
        core.patch_persistent_volume(pv.metadata.name, patch)


def apply_example(custom: client.CustomObjectsApi, path: Path) -> str:
    """Create (or replace the spec of) one example DeepSeekDeployment in the demo namespace."""
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    body["metadata"]["namespace"] = NAMESPACE
    try:
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        patch = {"spec": body["spec"]}
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, name, patch)
    return name


def print_deployments(items: list[dict[str, Any]]) -> None:
    """The DSDs as `kubectl get dsd -o wide` would show them, plus where each replica sits."""
    rows = []
    for item in sorted(items, key=lambda i: i["metadata"]["name"]):
        status = item.get("status") or {}
        placements = status.get("placements") or []
        first = placements[0] if placements else {}
        where = "; ".join("+".join(f"{n['name']}:{n['devices']}" for n in p["nodes"]) for p in placements)
        rows.append([
            item["metadata"]["name"], item["spec"]["model"], first.get("precision", "-"),
            first.get("accelerator", "-"), str(item["spec"].get("replicas", 1)), str(status.get("readyReplicas", 0)),
            status.get("phase", "-"), where or "-",
        ])  # fmt: skip
    print(format_table(["NAME", "MODEL", "PRECISION", "ACCELERATOR", "REPLICAS", "READY", "PHASE", "NODES"], rows))
    for item in sorted(items, key=lambda i: i["metadata"]["name"]):
        status = item.get("status") or {}
        if status.get("phase") in ("Unschedulable", "Degraded", "Failed"):
            print(f"  {item['metadata']['name']}: {status.get('message')}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the examples to settle")
    parser.add_argument("--keep-operator", action="store_true", help="leave `dspool run` running afterwards")
    args = parser.parse_args(argv)

    step("Local control plane (built from pinned Go modules on first use; cached afterwards)")
    subprocess.run([sys.executable, str(REPO / "e2e" / "cluster.py"), "up"], check=True)
    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)

    step("Simulated pool: examples/pools/enterprise-mixed.yaml")
    pool = load_pool(REPO / "examples" / "pools" / "enterprise-mixed.yaml")
    print(f"applied {apply_pool(core, pool)} nodes of pool {pool.name}")

    step("CRD deepseekdeployments.dspool.io (generated from the pydantic models)")
    install_crd(api_client)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    create_weights_volume(core)

    step("Operator: dspool run (log: .cluster/logs/operator.log)")
    log_path = REPO / ".cluster" / "logs" / "operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    with log_path.open("ab") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "dspool", "run", "--liveness-port", "0", "--resync-seconds", "5",
             "--node-selector", POOL_SELECTOR, "--metrics-port", str(METRICS_PORT)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        step(f"kubectl apply -n {NAMESPACE} " + " ".join(f"-f examples/{e}" for e in EXAMPLES))
        names = []
        for example in EXAMPLES:
            names.append(apply_example(custom, REPO / "examples" / example))
            time.sleep(1)  # one after another, as a team would apply them: placement order is visible
        deadline = time.monotonic() + args.timeout
        items: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL)["items"]
            phases = [(i.get("status") or {}).get("phase") for i in items if i["metadata"]["name"] in names]
            if len(phases) == len(names) and all(p in SETTLED for p in phases):
                break
            time.sleep(1)
        step(f"kubectl get dsd -n {NAMESPACE}")
        print_deployments(items)
        step("dspool pool  (devices per accelerator, what still fits, and which replicas sit where)")
        subprocess.run([sys.executable, "-m", "dspool", "pool", "--node-selector", POOL_SELECTOR], env=env, check=True)
        step("dspool plan -f examples/r1-671b.yaml --cluster  (dry run: where would one more replica go?)")
        subprocess.run(
            [sys.executable, "-m", "dspool", "plan", "-f", str(REPO / "examples" / "r1-671b.yaml"), "--cluster",
             "--node-selector", POOL_SELECTOR],
            env=env, check=True,
        )  # fmt: skip
        step(f"curl localhost:{METRICS_PORT}/metrics  (what Prometheus scrapes from the operator; excerpt)")
        time.sleep(6)  # one resync, so the figures are those of a settled pass
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(
                    (
                        'dspool_pool_devices{accelerator="H200',
                        'dspool_pool_placeable_replicas{accelerator="all"',
                        "dspool_pool_whole_free_nodes",
                        "dspool_pool_stranded_devices",
                        'dspool_deployment_pending_replicas{deployment="r1-671b-ampere"',
                        'dspool_replica_info{accelerator="Ascend910B3"',
                    )
                ):
                    print(line)
        print(f"\nExplore: export KUBECONFIG={KUBECONFIG}; dspool pool; kubectl get dsd,deploy,sts,pods -n {NAMESPACE}")
    finally:
        if args.keep_operator:
            print(f"operator left running (pid {operator.pid})")
        else:
            operator.terminate()
            operator.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
