"""The fault suite's invariant checks (e2e/faultsuite.py) on hand-made histories: each catches what it
should and lets through what the operator may legitimately do."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
import faultsuite
from dspool import api
from faultsuite import Observation


def placement(replica: int, *nodes: tuple[str, int]) -> dict[str, Any]:
    return {"replica": replica, "nodes": [{"name": n, "devices": d} for n, d in nodes]}


def seen(
    name: str, at: float, placements: list[dict[str, Any]], replicas: int = 1, generation: int = 1,
    observed: int | None = 1, kind: str = "MODIFIED", moves: list[dict[str, Any]] | None = None,
) -> Observation:  # fmt: skip
    status: dict[str, Any] = {"placements": placements, "observedGeneration": observed}
    if moves:
        status["moves"] = moves
    return Observation(kind, name, f"uid-{name}", generation, replicas, status, at)


def test_two_dsds_booking_the_same_devices_at_one_revision_are_caught() -> None:
    history = [
        seen("a", 1, [placement(0, ("n1", 6))], kind="ADDED"),
        seen("b", 2, [placement(0, ("n1", 4))], kind="ADDED"),
    ]
    found = faultsuite.check_bookings_over_time(history, {"n1": 8}, {})
    assert [v.invariant for v in found] == ["oversubscribed"] and "a, b" in found[0].detail


def test_devices_handed_over_between_revisions_and_lost_nodes_are_fine() -> None:
    history = [
        seen("a", 1, [placement(0, ("n1", 6))], kind="ADDED"),
        seen("a", 2, [], replicas=0, generation=2, observed=2),
        seen("b", 3, [placement(0, ("n1", 8))], kind="ADDED"),
        seen("c", 5, [placement(0, ("n2", 8))], kind="ADDED"),
        seen("d", 6, [placement(0, ("n2", 8))], kind="ADDED"),  # n2 was lost at 4: it no longer counts
    ]
    assert faultsuite.check_bookings_over_time(history, {"n1": 8, "n2": 8}, {"n2": 4.0}) == []


def test_a_placement_that_vanishes_while_its_node_exists_is_a_lost_status() -> None:
    history = [
        seen("a", 1, [placement(0, ("n1", 2)), placement(1, ("n2", 2))], replicas=2, kind="ADDED"),
        seen("a", 2, [placement(1, ("n2", 2))], replicas=2),
    ]
    found = faultsuite.check_status_never_lost(history, {})
    assert [v.invariant for v in found] == ["status-lost"] and "replica 0 on n1:2" in found[0].detail


def test_scale_down_node_loss_and_deletion_may_remove_placements() -> None:
    history = [
        seen("a", 1, [placement(0, ("n1", 2)), placement(1, ("n2", 2))], replicas=2, kind="ADDED"),
        seen("a", 2, [placement(0, ("n1", 2)), placement(1, ("n2", 2))], replicas=1, generation=2, observed=1),
        seen("a", 3, [placement(1, ("n2", 2))], replicas=1, generation=2, observed=2),  # scaled to 1
        seen("a", 5, [placement(1, ("n3", 2))], replicas=1, generation=2, observed=2),  # n2 lost at 4
        seen("a", 6, [], kind="DELETED"),
    ]
    assert faultsuite.check_status_never_lost(history, {"n2": 4.0}) == []


def test_scale_down_is_judged_at_the_generation_the_status_was_decided_for() -> None:
    history = [
        seen("a", 1, [placement(0, ("n1", 2)), placement(1, ("n2", 2))], replicas=2, kind="ADDED"),
        seen("a", 2, [placement(0, ("n1", 2)), placement(1, ("n2", 2))], replicas=1, generation=2),
        seen("a", 3, [placement(0, ("n1", 2)), placement(1, ("n2", 2))], replicas=2, generation=3),
        seen("a", 4, [placement(0, ("n1", 2))], replicas=2, generation=3, observed=2),  # decided at 1 replica
    ]
    assert faultsuite.check_status_never_lost(history, {}) == []
    decided_at_two = [*history[:3], seen("a", 4, [placement(0, ("n1", 2))], replicas=2, generation=3, observed=3)]
    assert [v.invariant for v in faultsuite.check_status_never_lost(decided_at_two, {})] == ["status-lost"]


def dsd(name: str, status: dict[str, Any], replicas: int = 1, uid: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid or f"uid-{name}"}, "spec": {"replicas": replicas}, "status": status}


def test_every_dsd_is_placed_or_says_why() -> None:
    unschedulable = {"phase": "Unschedulable", "conditions": [
        {"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": "no H100 free"}]}  # fmt: skip
    good = [
        dsd("a", {"phase": "Ready", "placements": [placement(0, ("n1", 1))]}),
        dsd("b", unschedulable),
    ]
    assert faultsuite.check_explained(good) == []
    bad = [
        dsd("c", {"phase": "Ready", "placements": []}),
        dsd("d", {"phase": "Degraded", "conditions": [{"type": "Scheduled", "status": "False", "reason": "X"}]}),
        dsd("e", {}),
    ]
    assert [v.detail.split(":")[0] for v in faultsuite.check_explained(bad)] == ["c", "d", "e"]


def workload(name: str, owner: str, uid: str, replica: int | None) -> tuple[str, dict[str, Any]]:
    labels = {api.DEPLOYMENT_LABEL: owner} | ({api.REPLICA_LABEL: str(replica)} if replica is not None else {})
    return "deployments", {"metadata": {"name": name, "labels": labels, "ownerReferences": [{"uid": uid}]}}


def test_workloads_of_gone_dsds_or_gone_replicas_are_orphans() -> None:
    dsds = [dsd("a", {"placements": [placement(0, ("n1", 1))]})]
    fine = [workload("a-0", "a", "uid-a", 0), workload("a", "a", "uid-a", None)]
    assert faultsuite.check_no_orphans(dsds, fine) == []
    orphans = [workload("a-1", "a", "uid-a", 1), workload("b-0", "b", "uid-b", 0), workload("x", "a", "old", 0)]
    assert len(faultsuite.check_no_orphans(dsds, orphans)) == 3


def test_bookings_plus_foreign_pods_and_bound_pods_fit_each_node() -> None:
    gpu = "nvidia.com/gpu"

    def pod(node: str, devices: int, owned: bool) -> dict[str, Any]:
        labels = {api.DEPLOYMENT_LABEL: "a"} if owned else {}
        return {"metadata": {"labels": labels}, "spec": {"nodeName": node, "containers": [
            {"resources": {"requests": {gpu: str(devices)}}}]}, "status": {"phase": "Running"}}  # fmt: skip

    dsds = [dsd("a", {"placements": [placement(0, ("n1", 6))]})]
    assert faultsuite.check_nodes_fit(dsds, {"n1": (gpu, 8)}, [pod("n1", 6, True), pod("n1", 2, False)]) == []
    found = faultsuite.check_nodes_fit(dsds, {"n1": (gpu, 8)}, [pod("n1", 6, True), pod("n1", 3, False)])
    assert [v.invariant for v in found] == ["oversubscribed", "oversubscribed"]


def test_plans_are_reproducible_and_hold_the_required_faults() -> None:
    assert faultsuite.plan_run(5) == faultsuite.plan_run(5)
    plan = faultsuite.plan_run(5, steps=6, required=faultsuite.FAULTS)
    actions = [step.action for step in plan]
    assert all(fault in actions for fault in faultsuite.FAULTS)
    assert actions.index("race-kill") > actions.index("lease-race")


def test_a_run_record_survives_json_and_the_table_counts_it_under_each_fault() -> None:
    run = faultsuite.RunResult(3, 11003, faultsuite.plan_run(11003))
    run.injected.update({"operator-kill": 2, "create": 4})
    run.violations.append(faultsuite.Violation("status-lost", "d01: replica 0 vanished"))
    again = faultsuite.RunResult.from_json(run.to_json())
    assert (again.index, again.injected, again.violations) == (run.index, run.injected, run.violations)
    clean = faultsuite.RunResult(4, 11004, [], injected=Counter({"operator-kill": 1, "apiserver-restart": 1}))
    table = faultsuite.summary_table([again, clean]).splitlines()
    kill = next(line for line in table if line.startswith("operator-kill")).split()
    restart = next(line for line in table if line.startswith("apiserver-restart")).split()
    assert kill[1:4] == ["2", "3", "1"] and kill[4 + faultsuite.INVARIANTS.index("status-lost")] == "1"
    assert restart[1:4] == ["1", "1", "0"]
