"""`dspool doctor` on the local control plane: a healthy pool passes, and each injected problem is found with
its fix (CRD of an older release, operator stopped, RBAC missing, LWS removed, nodes without GFD or device
plugin, an unknown GPU, a node without fabric label, no prometheus-operator CRDs)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO_ROOT, OperatorProcess, unique_name, wait_for, write_pool
from kubernetes import client
from test_chart import CHART, CRD_NAME, TOOLS, _older_crd, apply_monitoring_crds

from dspool.sim.apply import install_crd
from dspool.sim.fleet import PoolHandle

# Replaces dspool's CRD with an older one, deletes the ServiceMonitor CRD and removes LWS: not under other tests.
pytestmark = pytest.mark.serial


def doctor(kubeconfig: str, pool: PoolHandle, lease_name: str, namespace: str) -> dict[str, dict[str, str]]:
    """Run `dspool doctor -o json`; the findings by check."""
    done = subprocess.run(
        [sys.executable, "-m", "dspool", "doctor", "--kubeconfig", kubeconfig, "-o", "json",
         "--node-selector", f"dspool.io/pool={pool.name}", "--lease-name", lease_name, "--lease-namespace", namespace,
         "-n", namespace],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    findings = {f["check"]: f for f in json.loads(done.stdout)}
    assert done.returncode == (1 if any(f["level"] == "FAIL" for f in findings.values()) else 0)
    return findings


def helm(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    """helm (built by e2e/tools.py) against the local cluster."""
    return subprocess.run([str(TOOLS.binary("helm")), "--kubeconfig", kubeconfig, *args], capture_output=True,
                          text=True)  # fmt: skip


def levels(findings: dict[str, dict[str, str]]) -> dict[str, str]:
    return {check: f["level"] for check, f in findings.items()}


def test_doctor_passes_a_healthy_pool_and_finds_each_injected_problem(
    kubeconfig: str, namespace: str, fake_pool: Callable[[str], PoolHandle], core_v1: client.CoreV1Api,
    api_client: client.ApiClient, crd_installed: None, tmp_path: Path,
) -> None:  # fmt: skip
    pool = fake_pool(write_pool(tmp_path, "doctor", """
        - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
        - {name: atlas, count: 1, accelerator: Ascend910B3, labels: {dspool.io/fabric: rack-c}}
    """))  # fmt: skip
    # The chart in the test namespace (its operator pod stays Pending on kwok's tainted nodes: it names the
    # ServiceAccount whose rights doctor checks); the operator itself runs here, holding the Lease there.
    apply_monitoring_crds(kubeconfig)
    release = unique_name("dspool-doc")  # the full name is the release name
    installed = helm(kubeconfig, "install", release, str(CHART), "-n", namespace, "--wait=false",
                     "--set", "crdUpgrade.enabled=false")  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / "operator.log")
    lease_name = f"dspool-{pool.name}"
    operator.start()
    try:
        wait_for(lambda: levels(doctor(kubeconfig, pool, lease_name, namespace))["operator"] == "OK", 60,
                 "the operator to hold its Lease")  # fmt: skip
        healthy = doctor(kubeconfig, pool, lease_name, namespace)
        assert set(levels(healthy).values()) == {"OK"}, healthy
        assert f"ServiceAccount {namespace}/{release}" in healthy["rbac"]["detail"]

        # RBAC: the write rules unbound
        client.RbacAuthorizationV1Api(api_client).delete_cluster_role_binding(f"{release}-write")
        found = doctor(kubeconfig, pool, lease_name, namespace)["rbac"]
        assert found["level"] == "FAIL" and "patch deepseekdeployments.dspool.io/status" in found["detail"], found
        assert "rbac.create=true" in found["fix"]

        # Nodes: one H100 without GFD's product label, the other an unknown product without fabric label,
        # the Atlas server's device plugin gone (no huawei.com/Ascend910 advertised)
        h100_a, h100_b = sorted(n for n in pool.node_names if "h100" in n)
        [atlas] = [n for n in pool.node_names if "atlas" in n]
        core_v1.patch_node(h100_a, {"metadata": {"labels": {"nvidia.com/gpu.product": None}}})
        core_v1.patch_node(h100_b, {"metadata": {"labels": {"nvidia.com/gpu.product": "NVIDIA-Z9000",
                                                            "dspool.io/fabric": None}}})  # fmt: skip
        node = core_v1.read_node(atlas)
        allocatable = {k: v for k, v in node.status.allocatable.items() if not k.startswith("huawei.com/")}
        capacity = {k: v for k, v in node.status.capacity.items() if not k.startswith("huawei.com/")}
        core_v1.replace_node_status(atlas, {**api_client.sanitize_for_serialization(node),
                                            "status": {**api_client.sanitize_for_serialization(node.status),
                                                       "allocatable": allocatable, "capacity": capacity}})  # fmt: skip
        nodes = doctor(kubeconfig, pool, lease_name, namespace)
        assert nodes["gpu-labels"]["level"] == "FAIL" and h100_a in nodes["gpu-labels"]["detail"], nodes
        assert nodes["ascend"]["level"] == "FAIL" and atlas in nodes["ascend"]["detail"], nodes
        assert nodes["classify"]["level"] == "WARN"
        assert f"{h100_b}: accelerator 'NVIDIA-Z9000' is not in the catalog" in nodes["classify"]["detail"]
        core_v1.patch_node(h100_b, {"metadata": {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}})
        found = doctor(kubeconfig, pool, lease_name, namespace)["fabric"]
        assert found["level"] == "WARN" and f"H100-80G: {h100_b}" in found["detail"], found

        # The CRD of an older release
        ext = client.ApiextensionsV1Api(api_client)
        older = _older_crd()
        older["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(CRD_NAME).metadata.resource_version
        ext.replace_custom_resource_definition(CRD_NAME, older)
        found = doctor(kubeconfig, pool, lease_name, namespace)["crd"]
        assert found["level"] == "FAIL" and "differs from this dspool's" in found["detail"], found
        install_crd(api_client, timeout=30)
        assert doctor(kubeconfig, pool, lease_name, namespace)["crd"]["level"] == "OK"

        # No prometheus-operator CRDs
        ext.delete_custom_resource_definition("servicemonitors.monitoring.coreos.com")
        wait_for(lambda: doctor(kubeconfig, pool, lease_name, namespace)["monitoring"]["level"] == "WARN", 30,
                 "doctor to miss the ServiceMonitor CRD")  # fmt: skip

        # LeaderWorkerSet removed
        subprocess.run([sys.executable, str(REPO_ROOT / "e2e" / "cluster.py"), "lws", "remove"], check=True,
                       capture_output=True)  # fmt: skip
        try:
            found = doctor(kubeconfig, pool, lease_name, namespace)["lws"]
            assert found["level"] == "WARN" and "StatefulSets" in found["detail"], found
        finally:
            subprocess.run([sys.executable, str(REPO_ROOT / "e2e" / "cluster.py"), "lws", "install"], check=True,
                           capture_output=True)  # fmt: skip

        # The operator stopped: nobody renews the Lease
        operator.stop()
        wait_for(lambda: levels(doctor(kubeconfig, pool, lease_name, namespace))["operator"] == "FAIL", 60,
                 "doctor to see no operator renewing the Lease")  # fmt: skip
    finally:
        operator.stop()
        install_crd(api_client, timeout=30)
        apply_monitoring_crds(kubeconfig)
        helm(kubeconfig, "uninstall", release, "-n", namespace)
