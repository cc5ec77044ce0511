"""The pool kept between passes (dspool.inventory.live) against a full build_pool, pass after pass.

The invariant (in the style of LeaderWorkerSet's invariant tests): whatever sequence of watch events and
passes happens (nodes added, changed, cordoned, NotReady or removed; pods bound, finished or deleted; DSDs
created, scaled, deleted, their statuses echoed late or their writes failing), every pass ends with the
live pool equal to the pool a full build_pool makes from the same views and bookings: the same nodes with
the same counts, the same reservations.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from test_loop import CATALOG, NOW, FakeWriter, dsd, ready_pods_for, runner

from dspool import api
from dspool.inventory import Booking, LivePool, Pool, WatchChanges, pod_key
from dspool.loop import Snapshot
from dspool.metrics import PassSample, metric_families
from dspool.reconcile import ReconcileSettings
from dspool.sim.fleet import NodeGroup, PoolFile, node_manifests
from dspool.views import compact_node, present_nodes

PLACEMENT = {"replica": 0, "accelerator": "L20-48G", "precision": "bf16", "backend": "vllm", "tensorParallel": 2,
             "pipelineParallel": 1, "maxModelLen": 4096}  # fmt: skip
MODELS = ["deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-32b", "deepseek-r1-distill-llama-70b"]


def node_views(count: int, accelerator: str = "L20-48G", prefix: str = "n") -> list[dict[str, Any]]:
    fleet = PoolFile(name="t", groups=[NodeGroup(name=prefix, count=count, accelerator=accelerator)])
    views = []
    for manifest in node_manifests(fleet, CATALOG):
        manifest.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
        views.append(compact_node(manifest))
    return views


def pod(name: str, node: str | None, gpus: int, owner: str | None = None, replica: int = 0) -> dict[str, Any]:
    labels = {api.DEPLOYMENT_LABEL: owner, api.REPLICA_LABEL: str(replica)} if owner else {"app": "other"}
    return {
        "metadata": {"name": name, "namespace": "ai", "labels": labels, "annotations": {}},
        "spec": {"nodeName": node, "initContainers": [],
                 "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": "Running", "conditions": []},
    }  # fmt: skip


class Cluster:
    """What the watches hold, and the changes they saw since the last pass (as the informers journal them)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.spare = {v["metadata"]["name"]: v for v in node_views(8) + node_views(3, "H100-80G", "h")}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.dsds: dict[str, dict[str, Any]] = {}
        self.changes = WatchChanges()
        self.serial = 0
        for name in list(self.spare)[:5]:
            self.set_node(name, self.spare[name])

    def set_node(self, name: str, view: dict[str, Any] | None) -> None:
        if view is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = view
        self.changes.nodes[name] = view

    def set_pod(self, view: dict[str, Any], gone: bool = False) -> None:
        key = pod_key(view)
        if gone:
            self.pods.pop(key, None)
        else:
            self.pods[key] = view
        self.changes.pods[key] = None if gone else view

    def snapshot(self, journal: bool) -> Snapshot:
        changes, self.changes = self.changes, WatchChanges()
        return Snapshot(list(self.nodes.values()), list(self.pods.values()), list(self.dsds.values()),
                        changes=changes if journal else None)  # fmt: skip

    # ------------------------------------------------------------------ events

    def node_event(self) -> None:
        rng = self.rng
        absent = [n for n in self.spare if n not in self.nodes]
        if absent and (not self.nodes or rng.random() < 0.3):
            name = rng.choice(absent)
            self.set_node(name, self.spare[name])
            return
        name = rng.choice(sorted(self.nodes))
        view = self.nodes[name]
        what = rng.choice(["cordon", "uncordon", "not-ready", "long-not-ready", "ready", "shrink", "fabric", "gone"])
        if what == "gone":
            self.set_node(name, None)
            return
        changed = {**view, "metadata": {**view["metadata"]}, "spec": {**view["spec"]}, "status": {**view["status"]}}
        if what in ("cordon", "uncordon"):
            changed["spec"]["unschedulable"] = what == "cordon"
        elif what in ("not-ready", "long-not-ready", "ready"):
            since = NOW - timedelta(seconds=10 if what == "not-ready" else 1000)
            status = "True" if what == "ready" else "False"
            stamp = since.isoformat().replace("+00:00", "Z")
            changed["status"]["conditions"] = [{"type": "Ready", "status": status, "lastTransitionTime": stamp}]
        elif what == "shrink":
            resource = next(iter(k for k in changed["status"]["allocatable"] if "/" in k))
            changed["status"]["allocatable"] = {**changed["status"]["allocatable"], resource: str(rng.choice([4, 8]))}
        else:
            changed["metadata"]["labels"] = {**changed["metadata"]["labels"], "dspool.io/fabric": rng.choice("ab")}
        self.set_node(name, changed)

    def pod_event(self) -> None:
        rng = self.rng
        self.serial += 1
        what = rng.choice(["other", "dspool", "dspool", "ready", "finish", "delete", "unbound"])
        ready = [b for b in self.dsds.values() if (b.get("status") or {}).get("placements")]
        if what == "ready" and ready:  # a DSD's pods all bound and Ready: it may become steady
            body = rng.choice(ready)
            for view in ready_pods_for(body["status"], api.deployment_label_value(body["metadata"]["name"])):
                self.set_pod(view)
            return
        if what in ("finish", "delete") and self.pods:
            view = self.pods[rng.choice(sorted(self.pods))]
            if what == "delete":
                self.set_pod(view, gone=True)
            else:
                self.set_pod({**view, "status": {**view["status"], "phase": rng.choice(["Succeeded", "Failed"])}})
            return
        names = sorted(self.spare)
        if what == "dspool" and self.dsds:
            body = self.dsds[rng.choice(sorted(self.dsds))]
            placements = (body.get("status") or {}).get("placements") or [{"replica": 0, "nodes": []}]
            placement = rng.choice(placements)
            node = rng.choice([*(n["name"] for n in placement["nodes"]), rng.choice(names)])
            label = api.deployment_label_value(body["metadata"]["name"])
            replica = placement["replica"] if rng.random() < 0.8 else placement["replica"] + 1
            self.set_pod(pod(f"{label}-{replica}-{self.serial}", node, rng.choice([1, 2, 4]), label, replica))
            return
        node = None if what == "unbound" else rng.choice(names)
        self.set_pod(pod(f"other-{self.serial}", node, rng.choice([0, 1, 2, 3])))

    def dsd_event(self, writer: FakeWriter) -> None:
        rng = self.rng
        what = rng.choice(["create", "create", "scale", "delete", "echo", "echo"])
        if what == "create" or not self.dsds:
            self.serial += 1
            name = f"d{self.serial}"
            self.dsds[name] = dsd(name, replicas=rng.randint(1, 3), model=rng.choice(MODELS))
            return
        name = rng.choice(sorted(self.dsds))
        body = self.dsds[name]
        if what == "delete":
            del self.dsds[name]
        elif what == "scale":
            self.dsds[name] = {**body, "spec": {**body["spec"], "replicas": rng.randint(0, 3)}}
        elif name in writer.statuses:  # the watch echoes what was written (late, or never for a while)
            self.dsds[name] = {**body, "status": writer.statuses[name]}


def same_pool(live: Pool, full: Pool) -> None:
    live.check_invariant()
    assert live.nodes == full.nodes

    def booked(pool: Pool) -> dict[str, list[tuple[int, str, int]]]:
        return {d: sorted((r.replica, r.node, r.devices) for r in rs) for d, rs in pool.reservations.items() if rs}

    assert booked(live) == booked(full)


POOL_FAMILIES = ("dspool_pool_nodes", "dspool_pool_devices", "dspool_pool_fragmentation_ratio",
                 "dspool_pool_whole_free_nodes", "dspool_pool_placeable_replicas", "dspool_node_devices")  # fmt: skip


def pool_figures(families: Iterable[Metric]) -> dict[str, list[tuple[str, float]]]:
    """The pool's series (those that do not depend on the demand mix), comparable."""
    return {f.name: sorted((str(sorted(s.labels.items())), s.value) for s in f.samples)
            for f in families if f.name in POOL_FAMILIES}  # fmt: skip


@pytest.mark.parametrize("journal", [True, False], ids=["watch-changes", "views-compared"])
@pytest.mark.parametrize("seed", range(12))
def test_the_live_pool_ends_every_pass_as_a_full_build_of_the_same_inputs(seed: int, journal: bool) -> None:
    rng = random.Random(seed)
    cluster = Cluster(rng)
    writer = FakeWriter()
    pass_runner = runner(writer)
    assert pass_runner.live is not None
    for _ in range(14):
        for _ in range(rng.randint(0, 4)):
            event = rng.choice(["node", "pod", "dsd"])
            if event == "dsd":
                cluster.dsd_event(writer)
            else:
                (cluster.node_event if event == "node" else cluster.pod_event)()
        writer.fail_status = {name for name in cluster.dsds if rng.random() < 0.15}  # these status writes fail
        snapshot = cluster.snapshot(journal)
        pass_runner.run_pass(snapshot, ReconcileSettings())
        pass_runner.drain()
        full = pass_runner.build_pool(snapshot)
        same_pool(pass_runner.live.pool, full)
        assert pool_figures(pass_runner.metrics.state.collect()) == pool_figures(
            metric_families(PassSample(full, leader=True, catalog=CATALOG), 0)
        )  # what Prometheus scrapes: from a copy, equal to the pool a full build gives
        present = pass_runner.live.present(NOW, pass_runner.settings.node_grace_seconds)
        assert present == present_nodes(snapshot.nodes, NOW, pass_runner.settings.node_grace_seconds)


def test_a_pass_that_raised_leaves_the_next_one_to_compare_every_view() -> None:
    cluster = Cluster(random.Random(3))
    writer = FakeWriter(lose_lease_after=0)  # the first write raises: the pass ends half done
    pass_runner = runner(writer)
    assert pass_runner.live is not None
    cluster.dsds["a"] = dsd("a", replicas=2)
    with pytest.raises(Exception, match="not leading"):
        pass_runner.run_pass(cluster.snapshot(journal=True), ReconcileSettings())
    writer.lose_lease_after = -1
    cluster.node_event()
    snapshot = cluster.snapshot(journal=True)
    snapshot.changes = WatchChanges()  # even when the changes handed over are incomplete
    pass_runner.run_pass(snapshot, ReconcileSettings())
    same_pool(pass_runner.live.pool, pass_runner.build_pool(snapshot))


def test_a_pod_event_recounts_only_its_node_and_the_free_index_follows() -> None:
    views = node_views(3)
    live = LivePool(CATALOG)
    pool = live.start_pass(views, [], None, [])
    live.end_pass([])
    index = pool.free_index()
    other = pod("other", "n-000", 3)
    live.start_pass(views, [other], WatchChanges(pods={pod_key(other): other}), [])
    assert (pool.nodes["n-000"].used, pool.nodes["n-001"].used) == (3, 0)
    assert index is pool.free_index() and index.free_of("n-000") == 5  # the same index, kept exact
    live.end_pass([])
    finished = {**other, "status": {"phase": "Succeeded"}}
    live.start_pass(views, [finished], WatchChanges(pods={pod_key(finished): finished}), [])
    assert pool.nodes["n-000"].used == 0 and index.free_of("n-000") == 8


def test_a_reservation_covers_its_own_pod_and_stops_covering_it_when_released() -> None:
    views = node_views(1)
    live = LivePool(CATALOG)
    placement = {**PLACEMENT, "nodes": [{"name": "n-000", "devices": 2}]}
    own = pod("r-0", "n-000", 2, owner="r", replica=0)
    body: Mapping[str, Any] = {"status": {"placements": [placement]}}
    booking = Booking("ai/r", (body,), [placement])
    pool = live.start_pass(views, [own], None, [booking])
    live.end_pass([booking])
    assert (pool.nodes["n-000"].used, pool.nodes["n-000"].reserved) == (0, 2)  # counted once
    released = Booking("ai/r", (object(),), [])
    live.start_pass(views, [own], WatchChanges(), [released])
    assert (pool.nodes["n-000"].used, pool.nodes["n-000"].reserved) == (2, 0)  # its pod still runs


def test_a_booking_on_a_node_that_leaves_the_pool_counts_again_when_the_node_comes_back() -> None:
    views = node_views(1)
    cordoned = {**views[0], "spec": {**views[0]["spec"], "unschedulable": True}}
    live = LivePool(CATALOG)
    booking = Booking("ai/r", (object(),), [{**PLACEMENT, "nodes": [{"name": "n-000", "devices": 3}]}])
    pool = live.start_pass(views, [], None, [booking])
    live.end_pass([booking])
    live.start_pass([cordoned], [], WatchChanges(nodes={"n-000": cordoned}), [booking])
    live.end_pass([booking])
    assert "n-000" not in pool.nodes and not pool.reservations
    live.start_pass(views, [], WatchChanges(nodes={"n-000": views[0]}), [booking])  # the same booking
    assert pool.nodes["n-000"].reserved == 3 and [r.node for r in pool.reservations["ai/r"]] == ["n-000"]


def test_devices_a_pass_holds_are_counted_from_the_pods_again_when_it_ends() -> None:
    views = node_views(2)
    live = LivePool(CATALOG)
    pool = live.start_pass(views, [], None, [])
    pool.hold({"n-001": 2})  # pods on their way out, as a pass counts them
    assert pool.nodes["n-001"].used == 2
    live.end_pass([])
    assert pool.nodes["n-001"].used == 0  # no pod holds them: the next pass sees them free


def test_the_metrics_copy_of_the_pool_does_not_change_with_later_passes() -> None:
    views = node_views(2)
    live = LivePool(CATALOG)
    live.start_pass(views, [], None, [])
    live.end_pass([])
    first = live.exported()
    busy = pod("busy", "n-001", 8)
    live.start_pass(views, [busy], WatchChanges(pods={pod_key(busy): busy}), [])
    live.end_pass([])
    second = live.exported()
    assert first.nodes["n-001"].free == 8 and second.nodes["n-001"].free == 0
    assert second.nodes["n-000"] is first.nodes["n-000"]  # unchanged nodes are not copied again
