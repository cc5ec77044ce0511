"""The pure reconcile core: status, reservations and objects for one DeepSeekDeployment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from dspool.api import (
    DEPLOYMENT_LABEL,
    PLACEMENT_LABEL,
    REPLICA_LABEL,
    DeepSeekDeploymentSpec,
    ReplicaPlacement,
    placement_fingerprint,
)
from dspool.catalog import builtin_catalog
from dspool.inventory import Pool, build_pool, reservations_from_status
from dspool.reconcile import reconcile, spec_hash
from dspool.sim.fleet import NodeGroup, PoolFile, node_manifests

CATALOG = builtin_catalog()
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def ready_nodes(*groups: tuple[str, int, str]) -> list[dict[str, Any]]:
    fleet = PoolFile(name="t", groups=[NodeGroup(name=n, count=c, accelerator=a) for n, c, a in groups])
    nodes = node_manifests(fleet, CATALOG)
    for node in nodes:
        node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    return nodes


def dsd(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None, ns: str = "ai") -> dict[str, Any]:
    body = {
        "apiVersion": "dspool.io/v1alpha1",
        "kind": "DeepSeekDeployment",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def pool_for(nodes: list[dict[str, Any]], *bodies: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> Pool:
    reservations = []
    for body in bodies:
        placements = [ReplicaPlacement.model_validate(p) for p in (body.get("status") or {}).get("placements", [])]
        reservations += reservations_from_status(body["metadata"]["namespace"], body["metadata"]["name"], placements)
    return build_pool(nodes, pods or [], reservations, CATALOG)


def ready_pod(name: str, placement: ReplicaPlacement | dict[str, Any], ns: str = "ai") -> dict[str, Any]:
    placement = ReplicaPlacement.model_validate(placement)
    labels = {
        DEPLOYMENT_LABEL: name,
        REPLICA_LABEL: str(placement.replica),
        PLACEMENT_LABEL: placement_fingerprint(placement),
    }
    return {
        "metadata": {"name": f"{name}-{placement.replica}-x", "namespace": ns, "labels": labels},
        "spec": {"nodeName": placement.nodes[0].name,
                 "containers": [{"name": "engine", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def test_unknown_model_fails_with_the_valid_choices() -> None:
    result = reconcile(dsd("x", {"model": "deepseek-r9"}), CATALOG, pool_for(ready_nodes()), [], NOW)
    assert result.status.phase == "Failed"
    assert "valid models" in (result.status.message or "") and result.objects == []


def test_new_deployment_is_placed_and_gets_workloads_and_a_service() -> None:
    nodes = ready_nodes(("h200", 1, "H200-141G"))
    body = dsd("r1", {"model": "deepseek-r1", "replicas": 1})
    result = reconcile(body, CATALOG, pool_for(nodes), [], NOW)
    assert result.status.phase == "Progressing"
    [placement] = result.status.placements
    expected_hash = spec_hash(DeepSeekDeploymentSpec.model_validate(body["spec"]))
    assert (placement.accelerator, placement.devices, placement.spec_hash) == ("H200-141G", 8, expected_hash)
    kinds = sorted(o["kind"] for o in result.objects)
    assert kinds == ["Deployment", "Service"]
    assert any(e.reason == "Placed" for e in result.events)


def test_ready_pods_make_the_phase_ready() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body = dsd("small", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 2})
    first = reconcile(body, CATALOG, pool_for(nodes), [], NOW)
    body["status"] = first.status.wire()
    pods = [ready_pod("small", p) for p in first.status.placements]
    second = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert second.status.phase == "Ready" and second.status.ready_replicas == 2
    assert second.status.placements == first.status.placements  # stable: nothing moves once placed


def test_nothing_fits_is_unschedulable_with_the_planner_reason() -> None:
    nodes = ready_nodes(("h100", 1, "H100-80G"))
    result = reconcile(dsd("r1", {"model": "deepseek-r1"}), CATALOG, pool_for(nodes), [], NOW)
    assert result.status.phase == "Unschedulable"
    assert "H100-80G" in (result.status.message or "")
    assert [o["kind"] for o in result.objects] == ["Service"]


def test_scale_down_keeps_the_remaining_replicas_where_they_are() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body = dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 3})
    body["status"] = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    before = {p["replica"]: p for p in body["status"]["placements"]}
    body["spec"]["replicas"] = 1
    after = reconcile(body, CATALOG, pool_for(nodes, body), [], NOW).status.placements
    assert len(after) == 1 and after[0].wire() == before[after[0].replica]


def test_lost_node_releases_the_replica_and_places_it_elsewhere() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body = dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})
    body["status"] = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    lost = body["status"]["placements"][0]["nodes"][0]["name"]
    survivors = [n for n in nodes if n["metadata"]["name"] != lost]
    result = reconcile(body, CATALOG, pool_for(survivors, body), [], NOW)
    assert [n.name for n in result.status.placements[0].nodes] != [lost]
    assert any(e.reason == "ReplicaLost" for e in result.events)


def test_pods_stuck_unschedulable_get_a_new_placement() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body = dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})
    body["status"] = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    stuck_since = (NOW - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fingerprint = placement_fingerprint(ReplicaPlacement.model_validate(body["status"]["placements"][0]))
    pod: dict[str, Any] = {
        "metadata": {"name": "d-0-x", "namespace": "ai",
                     "labels": {DEPLOYMENT_LABEL: "d", REPLICA_LABEL: "0", PLACEMENT_LABEL: fingerprint}},
        "spec": {"containers": []},
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "lastTransitionTime": stuck_since}]},
    }  # fmt: skip
    result = reconcile(body, CATALOG, pool_for(nodes, body), [pod], NOW)
    assert any(e.reason == "ReplicaLost" and "unschedulable" in e.message for e in result.events)
    # A pod waiting for a missing volume keeps its placement: moving it would not help.
    condition = pod["status"]["conditions"][0]
    condition["message"] = 'persistentvolumeclaim "weights" not found'
    result = reconcile(body, CATALOG, pool_for(nodes, body), [pod], NOW)
    assert not any(e.reason == "ReplicaLost" for e in result.events)
    condition["message"] = "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match ..."
    result = reconcile(body, CATALOG, pool_for(nodes, body), [pod], NOW)
    assert any(e.reason == "ReplicaLost" for e in result.events)


def test_spec_change_is_make_before_break_when_there_is_room() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body = dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})
    body["status"] = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    old = body["status"]["placements"][0]
    body["spec"]["serving"] = {"gpuMemoryUtilization": 0.85}
    pods = [ready_pod("d", old)]
    rolled = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert len(rolled.status.placements) == 2  # the old replica keeps serving while the new one starts
    assert rolled.status.ready_replicas == 1
    body["status"] = rolled.status.wire()
    new = next(p for p in rolled.status.placements if p.replica != old["replica"])
    pods.append(ready_pod("d", new))
    done = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert [p.replica for p in done.status.placements] == [new.replica]  # old one removed once the new is Ready
    assert any(e.reason == "Replaced" for e in done.events)


def test_spec_change_without_room_replaces_in_place() -> None:
    nodes = ready_nodes(("h200", 1, "H200-141G"))
    body = dsd("r1", {"model": "deepseek-r1", "replicas": 1})
    body["status"] = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    body["spec"]["serving"] = {"gpuMemoryUtilization": 0.95}
    result = reconcile(body, CATALOG, pool_for(nodes, body), [], NOW)
    assert len(result.status.placements) == 1
    assert result.status.placements[0].spec_hash == spec_hash(DeepSeekDeploymentSpec.model_validate(body["spec"]))
    assert any(e.reason == "Replacing" for e in result.events)


def test_two_deployments_never_share_a_device() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    first = dsd("a", {"model": "deepseek-r1-distill-qwen-14b", "replicas": 3})  # 2 devices each
    pool = pool_for(nodes)
    first["status"] = reconcile(first, CATALOG, pool, [], NOW).status.wire()
    second = dsd("b", {"model": "deepseek-r1-distill-qwen-14b", "replicas": 2})
    result = reconcile(second, CATALOG, pool, [], NOW)  # same in-memory pool, as in one operator pass
    assert len(result.status.placements) == 1 and result.status.phase == "Degraded"
    total = sum(p["nodes"][0]["devices"] for p in first["status"]["placements"]) + result.status.placements[0].devices
    assert total == 8


def placed(body: dict[str, Any], nodes: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reconcile once, store the status, and make every replica's pod Ready."""
    body["status"] = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    return body, [ready_pod(body["metadata"]["name"], p) for p in body["status"]["placements"]]


def test_a_new_spec_that_fits_nowhere_keeps_every_old_replica_serving() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 3}), nodes)
    body["spec"]["placement"] = {"nodeSelector": {"zone": "nowhere"}}
    result = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert len(result.status.placements) == 3 and result.status.ready_replicas == 3
    assert result.status.phase == "Progressing"
    assert not any(e.reason == "Replacing" for e in result.events)


def test_rolling_in_place_replaces_one_old_replica_per_pass() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-14b", "replicas": 4}), nodes)  # 4 x 2 = 8
    body["spec"]["serving"] = {"gpuMemoryUtilization": 0.85}
    result = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert sum(e.reason == "Replacing" for e in result.events) == 1
    assert len(result.status.placements) == 4 and result.status.ready_replicas == 3
    new_hash = spec_hash(DeepSeekDeploymentSpec.model_validate(body["spec"]))
    assert sum(p.spec_hash == new_hash for p in result.status.placements) == 1


def test_a_typo_in_the_model_holds_the_running_replicas() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 2}), nodes)
    body["spec"]["model"] = "deepseek-r1-distill-qwen-7"
    result = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert result.status.phase == "Failed" and result.hold
    assert [p.wire() for p in result.status.placements] == body["status"]["placements"]


def test_unknown_status_fields_do_not_drop_reservations() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 2}), nodes)
    body["status"]["fieldFromANewerDspool"] = {"x": 1}
    result = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert result.status.phase == "Ready"
    assert [p.wire() for p in result.status.placements] == body["status"]["placements"]


def test_a_cordoned_node_keeps_its_replica() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1}), nodes)
    home = body["status"]["placements"][0]["nodes"][0]["name"]
    cordoned = [dict(n, spec={**n.get("spec", {}), "unschedulable": True}) if n["metadata"]["name"] == home else n
                for n in nodes]  # fmt: skip
    present = {n["metadata"]["name"] for n in nodes}
    result = reconcile(body, CATALOG, pool_for(cordoned, body, pods=pods), pods, NOW, present_nodes=present)
    assert [n.name for n in result.status.placements[0].nodes] == [home]
    assert not any(e.reason == "ReplicaLost" for e in result.events)


def test_a_stuck_replica_moves_to_another_node() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body, _ = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1}), nodes)
    placement = ReplicaPlacement.model_validate(body["status"]["placements"][0])
    since = (NOW - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = ready_pod("d", placement)
    pod["spec"] = {"containers": []}
    scheduled = {"type": "PodScheduled", "status": "False", "lastTransitionTime": since,
                 "message": "0/2 nodes are available: 1 Insufficient cpu"}  # fmt: skip
    pod["status"] = {"phase": "Pending", "conditions": [scheduled]}
    result = reconcile(body, CATALOG, pool_for(nodes, body), [pod], NOW)
    assert result.status.placements[0].nodes[0].name != placement.nodes[0].name


def test_strategy_changes_and_explicit_defaults_do_not_roll_replicas() -> None:
    base = DeepSeekDeploymentSpec.model_validate({"model": "deepseek-r1"})
    same = DeepSeekDeploymentSpec.model_validate(
        {"model": "deepseek-r1", "replicas": 4, "precision": "auto", "placement": {"strategy": "spread"}}
    )
    assert spec_hash(base) == spec_hash(same)
    assert spec_hash(base) != spec_hash(DeepSeekDeploymentSpec.model_validate({"model": "deepseek-r1-0528"}))


def test_scaling_bounds_cap_what_an_autoscaler_asks_for_and_the_status_says_so() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    spec = {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 9, "scaling": {"minReplicas": 1, "maxReplicas": 3}}
    result = reconcile(dsd("small", spec), CATALOG, pool_for(nodes), [], NOW)
    assert len(result.status.placements) == 3 and result.desired == 3
    scaling = next(c for c in result.status.conditions if c.type == "Scaling")
    assert (scaling.status, scaling.reason) == ("True", "Limited")
    assert "spec.replicas 9 is above scaling.maxReplicas 3: running 3" in scaling.message
    low = reconcile(dsd("small", {**spec, "replicas": 0}), CATALOG, pool_for(nodes), [], NOW)
    assert len(low.status.placements) == 1  # minReplicas keeps one serving


def test_changing_bounds_or_consent_to_moves_rolls_no_replica() -> None:
    base = DeepSeekDeploymentSpec.model_validate({"model": "deepseek-r1"})
    bounded = DeepSeekDeploymentSpec.model_validate(
        {"model": "deepseek-r1", "scaling": {"maxReplicas": 4}, "placement": {"rebalance": "Never"}}
    )
    assert spec_hash(base) == spec_hash(bounded)


def test_a_finished_pod_of_a_replica_replaced_in_place_frees_its_devices_for_the_next_deployment() -> None:
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-14b", "replicas": 4}), nodes)  # 4 x 2 on one
    home = body["status"]["placements"][0]["nodes"][0]["name"]
    [other] = [n["metadata"]["name"] for n in nodes if n["metadata"]["name"] != home]
    foreign = {
        "metadata": {"name": "batch", "namespace": "x"},
        "spec": {"nodeName": other, "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "7"}}}]},
        "status": {"phase": "Running"},
    }
    evicted = ready_pod("d", body["status"]["placements"][3])  # replica 3 ran on the other node once, then failed
    evicted["metadata"]["name"] = "d-3-evicted"
    evicted["spec"]["nodeName"] = other
    evicted["status"] = {"phase": "Failed", "reason": "Evicted"}
    pods.append(evicted)
    body["spec"]["serving"] = {"gpuMemoryUtilization": 0.85}
    pool = pool_for(nodes, body, pods=[*pods, foreign])

    rolled = reconcile(body, CATALOG, pool, pods, NOW)
    small = reconcile(dsd("s", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 1}), CATALOG, pool, [], NOW)

    assert any(e.reason == "Replacing" for e in rolled.events)
    assert [n.name for p in small.status.placements for n in p.nodes] == [other]  # the device the batch job left


def test_a_new_spec_with_no_room_leaves_a_replica_on_a_cordoned_node_serving() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body, pods = placed(dsd("d", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1}), nodes)
    cordoned = [dict(n, spec={**n.get("spec", {}), "unschedulable": True}) for n in nodes]
    present = {n["metadata"]["name"] for n in nodes}
    body["spec"]["serving"] = {"gpuMemoryUtilization": 0.85}

    result = reconcile(body, CATALOG, pool_for(cordoned, body, pods=pods), pods, NOW, present_nodes=present)

    assert [p.wire() for p in result.status.placements] == body["status"]["placements"]
    assert result.status.ready_replicas == 1 and not any(e.reason == "Replacing" for e in result.events)


def test_r1_on_a100_runs_fp8_weight_only_unless_the_pinned_vllm_image_is_too_old() -> None:
    from dspool.reconcile import ReconcileSettings
    from dspool.workloads import ImageDefaults

    nodes = ready_nodes(("a100", 3, "A100-80G"))
    current = reconcile(dsd("r1", {"model": "deepseek-r1"}), CATALOG, pool_for(nodes), [], NOW)
    [placement] = current.status.placements
    assert placement.precision == "w8a16" and sum(n.devices for n in placement.nodes) == 16
    assert "--quantization" not in json.dumps(current.objects)  # vLLM reads the checkpoint's own FP8 config
    assert "deepseek-r1" in json.dumps(current.objects)

    pinned = {"model": "deepseek-r1", "serving": {"image": "vllm/vllm-openai:v0.8.5"}}
    old = reconcile(dsd("r1", pinned), CATALOG, pool_for(nodes), [], NOW)
    [placement] = old.status.placements
    assert placement.precision == "bf16" and sum(n.devices for n in placement.nodes) == 24

    site = ReconcileSettings(images=ImageDefaults(vllm="vllm/vllm-openai:v0.8.5"))
    by_site = reconcile(dsd("r1", {"model": "deepseek-r1"}), CATALOG, pool_for(nodes), [], NOW, site)
    assert by_site.status.placements[0].precision == "bf16"


def test_specs_the_api_server_would_refuse_as_workloads_fail_with_the_field_named() -> None:
    # Stored before the CRD carried these rules: dspool says why instead of retrying refused writes forever.
    nodes = ready_nodes(("l20", 1, "L20-48G"))
    small = "deepseek-r1-distill-qwen-1.5b"
    cases = {
        "serving.env": {"model": small, "serving": {"env": [{"name": "X"}, {"name": "X", "value": "2"}]}},
        "serving.resources": {"model": small, "serving": {"resources": {"requests": {"memory": "2Gi"},
                                                                         "limits": {"memory": "1Gi"}}}},
        "serving.image": {"model": small, "serving": {"image": "engine image"}},
    }  # fmt: skip
    for field, spec in cases.items():
        result = reconcile(dsd("x", spec), CATALOG, pool_for(nodes), [], NOW)
        assert result.status.phase == "Failed" and result.objects == []
        assert field in (result.status.message or ""), result.status.message
