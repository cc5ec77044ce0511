"""Invariants over whole multi-pass sequences: reconcile() pass after pass on a simulated cluster.

In the spirit of LeaderWorkerSet's planner tests: a small world stands in for the API server, the
scheduler and the kubelet. Each pass builds the pool with ``dspool.inventory.build_pool`` from the nodes,
the pods and every DSD's stored placements, reconciles every DSD on that one pool (as the controller does)
and stores the statuses. Then the world moves one step: pods whose objects are gone or changed terminate
(they hold their devices one more step), the objects' pods are created, bound to their planned node when it
has the devices free (else they wait, Pending, as the scheduler makes them wait), and become Ready the step
after they were bound.

Checked after every pass: the pool's own invariant; no node has more devices booked by placements than it
has; a pod never waits long for its devices (a wait longer than a terminating pod's means a device was
booked twice); at most one old replica removed per pass when rolling without room; and, when there is room,
no serving gap: a roll never lowers the Ready count.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_reconcile import CATALOG, ready_nodes

from dspool.api import (
    DEPLOYMENT_LABEL,
    PLACEMENT_LABEL,
    REPLICA_LABEL,
    DeepSeekDeploymentSpec,
    ReplicaPlacement,
    deployment_label_value,
)
from dspool.inventory import Pool, build_pool, pod_device_requests, reservations_from_status
from dspool.reconcile import DEFAULT_STUCK_AFTER_SECONDS, ReconcileResult, reconcile, spec_hash

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PASS_SECONDS = 30  # one pass and one world step
LONGEST_WAIT_STEPS = 2  # a pod may wait for a terminating pod to go; longer means its devices were taken
NAMESPACE = "ai"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
REPLACING = re.compile(r"replica (\d+) removed to make room")
PLACED = re.compile(r"replica (\d+): ")
SMALL = "deepseek-r1-distill-qwen-7b"  # one RTX 4090 per replica
MEDIUM = "deepseek-r1-distill-qwen-14b"  # two RTX 4090s per replica


def device_count(node: dict[str, Any]) -> int:
    """The node's allocatable accelerator devices (its one extended resource)."""
    return max((int(v) for k, v in node["status"]["allocatable"].items() if "/" in k), default=0)


def planned_nodes(template: dict[str, Any]) -> list[str]:
    """The nodes a pod template's required node affinity names, one term per node."""
    terms = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return [term["matchFields"][0]["values"][0] for term in terms["nodeSelectorTerms"]]


def pods_of_objects(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pods the workload controllers would create for these objects, unbound, by name.

    A pod is named after its object, its placement fingerprint and its ordinal, so a changed template
    (a new placement) means new pods and the old ones terminating, as a Recreate Deployment does.
    """
    groups: list[tuple[str, dict[str, Any], int]] = []
    for obj in objects:
        name, spec = obj["metadata"]["name"], obj.get("spec") or {}
        if obj["kind"] == "Deployment":
            groups.append((name, spec["template"], 1))
        elif obj["kind"] == "StatefulSet":
            groups.append((name, spec["template"], spec["replicas"]))
        elif obj["kind"] == "LeaderWorkerSet":
            templates = spec["leaderWorkerTemplate"]
            groups.append((name, templates["leaderTemplate"], 1))
            groups.append((f"{name}-w", templates["workerTemplate"], templates["size"] - 1))
    pods: dict[str, dict[str, Any]] = {}
    for name, template, count in groups:
        nodes = planned_nodes(template)
        labels = template["metadata"]["labels"]
        for ordinal in range(count):
            pod_name = f"{name}-{labels[PLACEMENT_LABEL]}-{ordinal}"
            pods[pod_name] = {
                "metadata": {"name": pod_name, "namespace": NAMESPACE, "labels": dict(labels)},
                "spec": {**template["spec"], "planned": nodes[ordinal]},
                "status": {"phase": "Pending"},
            }
    return pods


@dataclass
class World:
    """The API server, scheduler and kubelet as far as reconcile() can tell."""

    nodes: list[dict[str, Any]]
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> DSD body
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    waited: Counter[str] = field(default_factory=Counter)  # pod -> steps spent Pending
    replaced: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (DSD, replica) -> replicas replaced
    double_booked: list[str] = field(default_factory=list)  # pods that waited on devices booked for another
    now: datetime = START
    pool: Pool | None = None

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        """Create the DSD or replace its spec (kubectl apply)."""
        body = self.deployments.setdefault(
            name,
            {"apiVersion": "dspool.io/v1alpha1", "kind": "DeepSeekDeployment",
             "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 0}},
        )  # fmt: skip
        body["spec"] = spec
        body["metadata"]["generation"] += 1

    def lose_node(self, name: str) -> None:
        """The node is gone; so are its pods."""
        self.nodes = [n for n in self.nodes if n["metadata"]["name"] != name]
        self.pods = {k: p for k, p in self.pods.items() if p["spec"].get("nodeName") != name}

    def own_pods(self, name: str) -> list[dict[str, Any]]:
        label = deployment_label_value(name)
        return [p for p in self.pods.values() if p["metadata"]["labels"].get(DEPLOYMENT_LABEL) == label]

    def reconcile_pass(self) -> dict[str, ReconcileResult]:
        """One operator pass: one pool, every DSD in creation order, statuses stored."""
        reservations = []
        for body in self.deployments.values():
            placements = [ReplicaPlacement.model_validate(p) for p in (body.get("status") or {}).get("placements", [])]
            reservations += reservations_from_status(NAMESPACE, body["metadata"]["name"], placements)
        pool = build_pool(self.nodes, list(self.pods.values()), reservations, CATALOG)
        results = {}
        for name, body in self.deployments.items():
            result = reconcile(body, CATALOG, pool, self.own_pods(name), self.now)
            body["status"] = result.status.wire()
            results[name] = result
        self.pool = pool
        return results

    def step(self, results: dict[str, ReconcileResult]) -> None:
        """The cluster catches up with the objects: terminate, create, bind, become Ready."""
        self.pods = {k: p for k, p in self.pods.items() if not p["metadata"].get("deletionTimestamp")}
        desired: dict[str, dict[str, Any]] = {}
        for name, result in results.items():
            desired.update(pods_of_objects(result.objects))
            victims = [REPLACING.match(e.message) for e in result.events if e.reason == "Replacing"]
            placed = [PLACED.match(e.message) for e in result.events if e.reason == "Placed"]
            for victim, successor in zip(victims, placed[-len(victims) :] if victims else [], strict=True):
                assert victim is not None and successor is not None
                self.replaced.setdefault((name, successor[1]), set()).add(victim[1])
        for name, pod in self.pods.items():
            if name not in desired:
                pod["metadata"]["deletionTimestamp"] = self.now.isoformat()
                pod["status"]["conditions"] = []  # a terminating pod serves no more
            elif pod["status"]["phase"] == "Running":
                pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        for name, pod in desired.items():
            self.pods.setdefault(name, pod)
        self._schedule()
        self.now += timedelta(seconds=PASS_SECONDS)

    def _schedule(self) -> None:
        """Bind each Pending pod to its planned node when the devices are free there (bound pods, terminating
        ones included, hold theirs); count how long the others wait."""
        for gone in set(self.waited) - set(self.pods):
            del self.waited[gone]
        names = {n["metadata"]["name"]: n for n in self.nodes}
        taken: Counter[str] = Counter()
        for pod in self.pods.values():
            if pod["spec"].get("nodeName"):
                taken[pod["spec"]["nodeName"]] += sum(pod_device_requests(pod).values())
        for name, pod in sorted(self.pods.items()):
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            node = names.get(pod["spec"]["planned"])
            devices = sum(pod_device_requests(pod).values())
            if node is not None and taken[node["metadata"]["name"]] + devices <= device_count(node):
                pod["spec"]["nodeName"] = node["metadata"]["name"]
                pod["status"] = {"phase": "Running", "conditions": []}
                taken[node["metadata"]["name"]] += devices
                self.waited.pop(name, None)
                continue
            self.waited[name] += 1
            if node is not None and not self._waits_only_for_its_predecessors(pod, node):
                self.double_booked.append(name)
            since = (self.now - timedelta(seconds=PASS_SECONDS * (self.waited[name] - 1))).strftime(TIME_FORMAT)
            pod["status"] = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "lastTransitionTime": since,
                 "message": "0/3 nodes are available: 1 Insufficient nvidia.com/gpu"}]}  # fmt: skip

    def _waits_only_for_its_predecessors(self, pod: dict[str, Any], node: dict[str, Any]) -> bool:
        """Whether the pod would fit on its node once the terminating pods of its own replica (an earlier
        placement of it) or of the replica it replaces in place are gone: the only wait dspool plans."""
        labels = pod["metadata"]["labels"]
        owner = next(n for n in self.deployments if deployment_label_value(n) == labels[DEPLOYMENT_LABEL])
        replica = labels[REPLICA_LABEL]
        predecessors = {replica, *self.replaced.get((owner, replica), set())}
        held = 0
        for other in self.pods.values():
            if other["spec"].get("nodeName") != node["metadata"]["name"]:
                continue
            other_labels = other["metadata"]["labels"]
            own = other_labels.get(DEPLOYMENT_LABEL) == labels[DEPLOYMENT_LABEL]
            if own and other["metadata"].get("deletionTimestamp") and other_labels[REPLICA_LABEL] in predecessors:
                continue
            held += sum(pod_device_requests(other).values())
        return held + sum(pod_device_requests(pod).values()) <= device_count(node)


def spec_of(model: str, replicas: int, utilization: float = 0.9) -> dict[str, Any]:
    return {"model": model, "replicas": replicas, "serving": {"gpuMemoryUtilization": utilization}}


def hashes(body: dict[str, Any]) -> Counter[str]:
    return Counter(p["specHash"] for p in body["status"]["placements"])


@dataclass
class Observer:
    """Runs passes and checks the invariants after each; remembers what a roll-with-room must keep."""

    world: World
    ready_before: dict[str, int] = field(default_factory=dict)

    def run(self, passes: int = 1, *, room: bool = False) -> dict[str, ReconcileResult]:
        results: dict[str, ReconcileResult] = {}
        for _ in range(passes):
            before = {name: dict(body.get("status") or {}) for name, body in self.world.deployments.items()}
            results = self.world.reconcile_pass()
            self.check(before, results, room=room)
            self.world.step(results)
        return results

    def check(self, before: dict[str, dict[str, Any]], results: dict[str, ReconcileResult], *, room: bool) -> None:
        world = self.world
        assert world.pool is not None
        world.pool.check_invariant()
        booked: Counter[str] = Counter()
        for body in world.deployments.values():
            for placement in body["status"]["placements"]:
                for node in placement["nodes"]:
                    booked[node["name"]] += node["devices"]
        for name, node in world.pool.nodes.items():
            assert booked[name] <= node.allocatable, f"{name}: {booked[name]} devices booked of {node.allocatable}"
        assert max(world.waited.values(), default=0) <= LONGEST_WAIT_STEPS, f"pods waiting: {world.waited}"
        assert not world.double_booked, f"pods waiting for devices booked for others: {world.double_booked}"
        for name, result in results.items():
            body = world.deployments[name]
            kept = {p["replica"] for p in body["status"]["placements"]}
            current = spec_hash(DeepSeekDeploymentSpec.model_validate(body["spec"]))
            removed_old = [
                p for p in before[name].get("placements", []) if p["replica"] not in kept and p["specHash"] != current
            ]
            rolled_in_place = sum(e.reason == "Replacing" for e in result.events)
            assert rolled_in_place <= 1, "at most one old replica replaced in place per pass"
            if len(removed_old) > 1 and not any(e.reason in ("ReplicaLost", "ScaledDown") for e in result.events):
                # more than one old replica at once only make-before-break: every new replica already serves
                assert result.status.ready_replicas == result.desired, [e.message for e in result.events]
            ready = result.status.ready_replicas or 0
            if room and not any(e.reason in ("ReplicaLost", "ScaledDown") for e in result.events):
                assert ready >= self.ready_before.get(name, 0), f"{name}: Ready {self.ready_before[name]} -> {ready}"
            self.ready_before[name] = ready


# ------------------------------------------------------------------------------------------- worked cases


def test_scale_up_then_down_books_each_device_once_and_ends_ready() -> None:
    observer = Observer(World(ready_nodes(("rtx", 2, "RTX4090-24G"))))
    observer.world.apply("a", spec_of(MEDIUM, 2))
    observer.run(3)
    observer.world.apply("a", spec_of(MEDIUM, 8))  # 16 devices asked of 16
    results = observer.run(4)
    assert results["a"].status.phase == "Ready" and results["a"].status.ready_replicas == 8
    observer.world.apply("a", spec_of(MEDIUM, 1))
    results = observer.run(3)
    assert results["a"].status.phase == "Ready" and len(results["a"].status.placements) == 1
    assert sum(1 for p in observer.world.pods.values() if p["spec"].get("nodeName")) == 1


def test_a_roll_with_room_never_lowers_the_ready_count() -> None:
    observer = Observer(World(ready_nodes(("rtx", 2, "RTX4090-24G"))))
    observer.world.apply("a", spec_of(MEDIUM, 3))  # 6 of 16 devices: room for a second set
    observer.run(3, room=True)
    observer.world.apply("a", spec_of(MEDIUM, 3, utilization=0.85))
    results = observer.run(5, room=True)
    assert results["a"].status.phase == "Ready"
    assert set(hashes(observer.world.deployments["a"])) == {results["a"].status.placements[0].spec_hash}
    assert not any(e.reason == "Replacing" for r in [results["a"]] for e in r.events)


def test_a_roll_without_room_replaces_one_replica_at_a_time_until_done() -> None:
    observer = Observer(World(ready_nodes(("rtx", 1, "RTX4090-24G"))))
    observer.world.apply("a", spec_of(MEDIUM, 4))  # 8 of 8 devices
    observer.run(3)
    body = observer.world.deployments["a"]
    old_hash = body["status"]["placements"][0]["specHash"]
    observer.world.apply("a", spec_of(MEDIUM, 4, utilization=0.85))
    old_replicas, ready = [4], []
    while body["status"]["phase"] != "Ready" or old_replicas[-1]:
        assert len(old_replicas) < 20, "the roll does not end"
        observer.run()
        old_replicas.append(hashes(body)[old_hash])
        ready.append(body["status"]["readyReplicas"])
    assert all(before - after in (0, 1) for before, after in pairwise(old_replicas))
    assert min(ready) == 3 and body["status"]["readyReplicas"] == 4  # one replica down at a time, then all back


def test_devices_a_replica_replaced_in_place_still_holds_go_to_nobody_else() -> None:
    observer = Observer(World(ready_nodes(("rtx", 1, "RTX4090-24G"))))
    observer.world.apply("a", spec_of(MEDIUM, 4))  # 8 of 8 devices
    observer.run(3)
    observer.world.apply("b", spec_of(SMALL, 1))  # waits for room
    observer.world.apply("a", spec_of(SMALL, 4))  # one device each now: the roll frees one more than it takes
    results = observer.run(16)
    assert results["a"].status.phase == "Ready" and results["b"].status.phase == "Ready"


def test_a_lost_node_moves_its_replicas_to_the_nodes_left() -> None:
    observer = Observer(World(ready_nodes(("rtx", 3, "RTX4090-24G"))))
    observer.world.apply("a", spec_of(SMALL, 4, utilization=0.9))
    observer.world.apply("b", spec_of(MEDIUM, 2))
    observer.run(3)
    lost = observer.world.deployments["a"]["status"]["placements"][0]["nodes"][0]["name"]
    observer.world.lose_node(lost)
    results = observer.run(4)
    for name in ("a", "b"):
        assert results[name].status.phase == "Ready"
        assert all(n.name != lost for p in results[name].status.placements for n in p.nodes)


def test_a_multi_node_replica_rolls_and_scales_without_double_booking() -> None:
    observer = Observer(World(ready_nodes(("h100", 4, "H100-80G"))))  # R1 FP8 needs two H100 servers
    observer.world.apply("r1", {"model": "deepseek-r1", "replicas": 1})
    results = observer.run(3, room=True)
    assert results["r1"].status.phase == "Ready" and len(results["r1"].status.placements[0].nodes) == 2
    observer.world.apply("r1", {"model": "deepseek-r1", "replicas": 1, "serving": {"gpuMemoryUtilization": 0.85}})
    results = observer.run(5, room=True)
    assert results["r1"].status.phase == "Ready" and len(results["r1"].status.placements) == 1
    observer.world.apply("r1", {"model": "deepseek-r1", "replicas": 2, "serving": {"gpuMemoryUtilization": 0.85}})
    results = observer.run(4)
    assert results["r1"].status.ready_replicas == 2


# -------------------------------------------------------------------------------------- random sequences

scale = st.tuples(st.just("scale"), st.sampled_from(["a", "b"]), st.integers(0, 6))
edit = st.tuples(st.just("edit"), st.sampled_from(["a", "b"]), st.sampled_from([0.8, 0.85, 0.9]))
resize = st.tuples(st.just("model"), st.sampled_from(["a", "b"]), st.sampled_from([SMALL, MEDIUM]))
lose = st.tuples(st.just("lose"), st.integers(0, 3))
wait = st.tuples(st.just("wait"), st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.one_of(scale, edit, resize, lose, wait), min_size=1, max_size=8))
def test_random_sequences_keep_every_invariant(steps: list[tuple[Any, ...]]) -> None:
    world = World(ready_nodes(("rtx", 4, "RTX4090-24G")))
    observer = Observer(world)
    specs = {"a": spec_of(SMALL, 2), "b": spec_of(MEDIUM, 2)}
    for name, spec in specs.items():
        world.apply(name, spec)
    observer.run(2)
    for step in steps:
        if step[0] == "scale":
            specs[step[1]] = {**specs[step[1]], "replicas": step[2]}
            world.apply(step[1], specs[step[1]])
        elif step[0] == "edit":
            specs[step[1]] = {**specs[step[1]], "serving": {"gpuMemoryUtilization": step[2]}}
            world.apply(step[1], specs[step[1]])
        elif step[0] == "model":
            specs[step[1]] = {**specs[step[1]], "model": step[2]}
            world.apply(step[1], specs[step[1]])
        elif step[0] == "lose" and len(world.nodes) > 1:
            world.lose_node(world.nodes[step[1] % len(world.nodes)]["metadata"]["name"])
        observer.run(step[1] if step[0] == "wait" else 1)
    results = observer.run(LONGEST_WAIT_STEPS + 4)  # settling, or rolling on; every pass still checked
    for result in results.values():
        if result.status.phase == "Ready":
            assert result.status.ready_replicas == result.desired
        else:  # short of room: the status says where it looked
            assert result.status.phase in ("Degraded", "Unschedulable", "Progressing"), result.status.message
    assert DEFAULT_STUCK_AFTER_SECONDS > LONGEST_WAIT_STEPS * PASS_SECONDS  # a waiting pod is never "stuck"
