"""Autoscaling on the local control plane: a real HPA on a DSD's scale subresource, and the pool's limits.

No metrics pipeline runs here (prometheus-adapter, real engines): the HPA object is accepted and its
controller (in kube-controller-manager) reads the DSD's scale subresource and writes it (raising its floor
above the current count makes it scale without metrics); the test checks what dspool does with the count.
docs/autoscaling.md has the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from conftest import REPO_ROOT, OperatorOn, wait_for
from kubernetes import client
from test_operator import create_dsd, get_dsd, pods_of, wait_phase

from dspool import api

EXAMPLES = REPO_ROOT / "examples" / "autoscaling"


def scale_to(custom: client.CustomObjectsApi, namespace: str, name: str, replicas: int) -> None:
    """What the HPA controller does: write spec.replicas through the scale subresource."""
    custom.patch_namespaced_custom_object_scale(api.GROUP, api.VERSION, namespace, api.PLURAL, name,
                                                {"spec": {"replicas": replicas}})  # fmt: skip


def condition(dsd: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in dsd["status"]["conditions"] if c["type"] == kind)


def test_an_hpa_drives_the_scale_subresource_and_dspool_places_up_to_the_pools_limit(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, core_v1: client.CoreV1Api,
    api_client: client.ApiClient, namespace: str,
) -> None:  # fmt: skip
    operator_on("autoscale", """
        - {name: l20, count: 2, accelerator: L20-48G}
    """)  # fmt: skip
    spec = yaml.safe_load((EXAMPLES / "r1-distill-qwen-32b.yaml").read_text())["spec"]
    spec["scaling"]["maxReplicas"] = 12  # above what two L20 servers hold (2 devices a replica: 8)
    create_dsd(custom, namespace, "r1-distill-qwen-32b", spec)
    wait_phase(custom, namespace, "r1-distill-qwen-32b", "Ready", 90)

    hpa = yaml.safe_load((EXAMPLES / "hpa-qwen-32b.yaml").read_text())
    hpa["spec"]["maxReplicas"] = 12
    autoscaling = client.AutoscalingV2Api(api_client)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)  # accepted by the real API server

    def able_to_scale() -> bool:
        status = autoscaling.read_namespaced_horizontal_pod_autoscaler(hpa["metadata"]["name"], namespace).status
        return any(c.type == "AbleToScale" and c.status == "True" for c in status.conditions or [])

    wait_for(able_to_scale, 90, "the HPA controller to read the DSD's scale subresource (AbleToScale)")
    scale = custom.get_namespaced_custom_object_scale(api.GROUP, api.VERSION, namespace, api.PLURAL,
                                                      "r1-distill-qwen-32b")  # fmt: skip
    assert scale["status"]["selector"]  # what the HPA averages its Pods metrics over

    # The HPA controller itself asks for more than the pool holds: with no metrics pipeline here, its floor
    # (minReplicas above the current count) is what makes it write the scale subresource.
    autoscaling.patch_namespaced_horizontal_pod_autoscaler(hpa["metadata"]["name"], namespace,
                                                           {"spec": {"minReplicas": 10}})  # fmt: skip

    def scaled_by_the_hpa() -> bool:
        dsd = get_dsd(custom, namespace, "r1-distill-qwen-32b")
        managers = {f.get("manager") for f in dsd["metadata"].get("managedFields") or []}
        return dsd["spec"]["replicas"] == 10 and "kube-controller-manager" in managers

    wait_for(scaled_by_the_hpa, 90, "the HPA controller to write 10 replicas through the scale subresource")
    dsd = wait_phase(custom, namespace, "r1-distill-qwen-32b", "Degraded", 90)
    assert len(dsd["status"]["placements"]) == 8  # every replica that fits, each whole
    assert "L20-48G" in condition(dsd, "Scheduled")["message"]  # why the other two wait
    wait_for(lambda: len(pods_of(core_v1, namespace, "r1-distill-qwen-32b")) == 8, 60, "8 serving pods")
    assert all(len(p["nodes"]) == 1 and p["nodes"][0]["devices"] == 2 for p in dsd["status"]["placements"])


def test_scaling_bounds_are_enforced_and_reported(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, namespace: str, tmp_path: Path
) -> None:
    operator_on("bounds", """
        - {name: rtx, count: 2, accelerator: RTX4090-24G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "small", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 1,
                                            "scaling": {"minReplicas": 1, "maxReplicas": 3}})  # fmt: skip
    wait_phase(custom, namespace, "small", "Ready", 90)
    scale_to(custom, namespace, "small", 7)

    def capped() -> dict[str, Any] | None:
        dsd = get_dsd(custom, namespace, "small")
        placed = len((dsd.get("status") or {}).get("placements", []))
        return dsd if placed == 3 and dsd["status"].get("phase") == "Ready" else None

    dsd = wait_for(capped, 90, "three replicas, the maxReplicas bound")
    assert condition(dsd, "Scaling")["reason"] == "Limited"
    assert "above scaling.maxReplicas 3" in condition(dsd, "Scaling")["message"]
    scale_to(custom, namespace, "small", 0)
    wait_for(lambda: len(get_dsd(custom, namespace, "small")["status"]["placements"]) == 1, 60, "minReplicas 1")
