"""Workloads the cluster refuses (docs/observability.md, DspoolDeploymentStuck): a ResourceQuota on the real
API server keeps the ReplicaSet controller from creating a DSD's pods; the DSD says so and recovers."""

from __future__ import annotations

from typing import Any

from conftest import OperatorOn, wait_for
from kubernetes import client
from test_operator import create_dsd, get_dsd, has_event, pods_of, wait_phase


def _refused(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = (get_dsd(custom, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "WorkloadRefused"), None)


def test_a_resource_quota_refusing_the_pods_shows_on_the_dsd_and_lifting_it_recovers(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    _pool, operator = operator_on("quota", """
        - {name: l20, count: 1, accelerator: L20-48G}
    """)  # fmt: skip
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gpu-quota"),
        spec=client.V1ResourceQuotaSpec(hard={"requests.nvidia.com/gpu": "0"}),
    )
    core_v1.create_namespaced_resource_quota(namespace, quota)
    create_dsd(custom, namespace, "small", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})

    condition = wait_for(lambda: _refused(custom, namespace, "small"), 90, "the WorkloadRefused condition")
    assert condition["status"] == "True" and condition["reason"] == "QuotaExceeded", condition
    assert "exceeded quota: gpu-quota" in condition["message"] and "requests.nvidia.com/gpu" in condition["message"]
    dsd = get_dsd(custom, namespace, "small")
    assert dsd["status"]["phase"] == "Progressing", operator.log_tail()
    assert dsd["status"]["message"].startswith("the cluster refuses its pods (QuotaExceeded)")
    wait_for(
        lambda: has_event(core_v1, namespace, "small", "WorkloadRefused", "Warning"), 30, "a WorkloadRefused event"
    )
    assert pods_of(core_v1, namespace, "small") == []

    core_v1.delete_namespaced_resource_quota("gpu-quota", namespace)
    wait_phase(custom, namespace, "small", "Ready", 120)  # the ReplicaSet controller retries with a back-off
    assert _refused(custom, namespace, "small") is None
