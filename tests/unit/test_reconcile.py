"""The pure reconcile core: status, reservations and objects for one DeepSeekDeployment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dspool.api import DEPLOYMENT_LABEL, REPLICA_LABEL, ReplicaPlacement
from dspool.catalog import builtin_catalog
from dspool.inventory import Pool, build_pool, reservations_from_status
from dspool.reconcile import reconcile, spec_hash
from dspool.sim.fleet import NodeGroup, node_manifests
from dspool.sim.fleet import Pool as FleetPool

CATALOG = builtin_catalog()
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def ready_nodes(*groups: tuple[str, int, str]) -> list[dict[str, Any]]:
    fleet = FleetPool(name="t", groups=[NodeGroup(name=n, count=c, accelerator=a) for n, c, a in groups])
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


def ready_pod(name: str, replica: int, node: str, ns: str = "ai") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}-{replica}-x", "namespace": ns,
                     "labels": {DEPLOYMENT_LABEL: name, REPLICA_LABEL: str(replica)}},
        "spec": {"nodeName": node,
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
    assert (placement.accelerator, placement.devices, placement.spec_hash) == ("H200-141G", 8, spec_hash(body["spec"]))
    kinds = sorted(o["kind"] for o in result.objects)
    assert kinds == ["Deployment", "Service"]
    assert any(e.reason == "Placed" for e in result.events)


def test_ready_pods_make_the_phase_ready() -> None:
    nodes = ready_nodes(("rtx", 1, "RTX4090-24G"))
    body = dsd("small", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 2})
    first = reconcile(body, CATALOG, pool_for(nodes), [], NOW)
    body["status"] = first.status.wire()
    pods = [ready_pod("small", p.replica, p.nodes[0].name) for p in first.status.placements]
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
    pod = {
        "metadata": {"name": "d-0-x", "namespace": "ai", "labels": {DEPLOYMENT_LABEL: "d", REPLICA_LABEL: "0"}},
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
    pods = [ready_pod("d", 0, old["nodes"][0]["name"])]
    rolled = reconcile(body, CATALOG, pool_for(nodes, body, pods=pods), pods, NOW)
    assert len(rolled.status.placements) == 2  # the old replica keeps serving while the new one starts
    assert rolled.status.ready_replicas == 1
    body["status"] = rolled.status.wire()
    new = next(p for p in rolled.status.placements if p.replica != old["replica"])
    pods.append(ready_pod("d", new.replica, new.nodes[0].name))
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
    assert result.status.placements[0].spec_hash == spec_hash(body["spec"])
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
