"""A move driven pass after pass by reconcile: make-before-break, no serving gap, no device booked twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_reconcile import CATALOG, NOW, dsd, pool_for, ready_nodes, ready_pod

from dspool.api import MoveState, NodeDevices, ReplicaMove
from dspool.rebalance import pdb_budgets
from dspool.reconcile import reconcile
from dspool.selectors import selector_selects


def moving_small() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A 1.5B with replica 0 on rtx-0 and its new copy (replica 1) booked on rtx-1, as start_plans writes it."""
    nodes = ready_nodes(("rtx", 2, "RTX4090-24G"))
    body = dsd("small", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 1})
    first = reconcile(body, CATALOG, pool_for(nodes), [], NOW).status.wire()
    [old] = first["placements"]
    new = {**old, "replica": 1, "nodes": [{"name": n["metadata"]["name"], "devices": 1} for n in nodes
                                          if n["metadata"]["name"] != old["nodes"][0]["name"]]}  # fmt: skip
    move = ReplicaMove(replica=0, new_replica=1, accelerator="RTX4090-24G", from_nodes=[NodeDevices(**old["nodes"][0])],
                       to_nodes=[NodeDevices(**new["nodes"][0])], state=MoveState.DESTINATION_RESERVED,
                       for_replica="ai/r1#0", started_at=NOW.isoformat())  # fmt: skip
    body["status"] = {**first, "placements": [old, new], "moves": [move.wire()]}
    return body, nodes


def devices_booked_twice(result: Any) -> bool:
    nodes = [n.name for p in result.status.placements for n in p.nodes]
    return len(nodes) != len(set(nodes))


def test_the_old_replica_serves_until_the_new_copy_is_ready_then_goes() -> None:
    body, nodes = moving_small()
    old, new = body["status"]["placements"]
    old_pod = ready_pod("small", old)
    # pass 1: the new copy has no Ready pod yet; both stay, the copy is not a surplus replica to scale down
    one = reconcile(body, CATALOG, pool_for(nodes, body, pods=[old_pod]), [old_pod], NOW)
    assert [p.replica for p in one.status.placements] == [0, 1]
    assert one.status.moves[0].state == MoveState.NEW_REPLICA_STARTING
    assert not any(e.reason == "ScaledDown" for e in one.events) and not devices_booked_twice(one)
    assert one.status.ready_replicas == 1  # never fewer than before the move
    # pass 2: the new copy serves: the old replica is removed in the same pass
    body["status"] = one.status.wire()
    new_pod = ready_pod("small", new)
    two = reconcile(body, CATALOG, pool_for(nodes, body, pods=[old_pod, new_pod]), [old_pod, new_pod], NOW)
    assert [p.replica for p in two.status.placements] == [1]
    assert two.status.ready_replicas == 1 and any(e.reason == "Moved" for e in two.events)
    assert two.moves_finished == 1 and two.devices_freed == 1
    # pass 3: the old pod is gone: the move is done, and nothing else changes
    body["status"] = two.status.wire()
    three = reconcile(body, CATALOG, pool_for(nodes, body, pods=[new_pod]), [new_pod], NOW)
    assert three.status.moves[0].state == MoveState.DONE and [p.replica for p in three.status.placements] == [1]


def test_a_new_copy_not_ready_in_time_is_rolled_back_and_the_old_replica_stays() -> None:
    body, nodes = moving_small()
    old, _new = body["status"]["placements"]
    old_pod = ready_pod("small", old)
    late = NOW + timedelta(seconds=901)
    result = reconcile(body, CATALOG, pool_for(nodes, body, pods=[old_pod]), [old_pod], late)
    assert [p.replica for p in result.status.placements] == [0]
    assert result.status.moves[0].state == MoveState.ROLLED_BACK and result.moves_rolled_back == 1
    assert result.status.ready_replicas == 1


def test_pdb_budgets_take_the_smallest_budget_of_the_pdbs_selecting_a_dsds_pods() -> None:
    pods = {("ai", "small"): [{"metadata": {"labels": {"app": "small", "tier": "llm"}}}]}
    pdbs = [
        {"namespace": "ai", "selector": {"matchLabels": {"app": "small"}}, "disruptionsAllowed": 2},
        {"namespace": "ai", "selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["llm"]}]},
         "disruptionsAllowed": 0},
        {"namespace": "other", "selector": {}, "disruptionsAllowed": 5},
    ]  # fmt: skip
    assert pdb_budgets(pdbs, pods) == {"ai/small": 0}
    assert selector_selects({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, {"app": "a"})
