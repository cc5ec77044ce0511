"""The pool inventory: which nodes dspool manages and how their devices are counted."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspool.api import NodeDevices, ReplicaPlacement
from dspool.catalog import Precision, Vendor, builtin_catalog
from dspool.inventory import (
    InsufficientDevicesError,
    NodeCache,
    Pool,
    PoolInvariantError,
    Reservation,
    build_pool,
    hold_pods,
    is_pod_active,
    node_from_k8s,
    pod_device_requests,
    reservations_from_status,
)
from dspool.sim.fleet import NodeGroup, PoolFile, node_manifests
from dspool.sizing import Backend

CATALOG = builtin_catalog()


def k8s_node(
    name: str,
    accelerator: str = "H200-141G",
    devices: int = 8,
    *,
    ready: str = "True",
    unschedulable: bool = False,
    taints: list[dict[str, str]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec = CATALOG.accelerator(accelerator)
    return {
        "metadata": {"name": name, "labels": {**spec.node_labels(devices), **(labels or {})}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {
            "allocatable": {spec.resource_name: str(devices), "cpu": "64"},
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}],
        },
    }


def k8s_pod(
    name: str,
    node: str | None,
    devices: int,
    *,
    resource: str = "nvidia.com/gpu",
    phase: str = "Running",
    namespace: str = "default",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            **({"nodeName": node} if node else {}),
            "containers": [{"name": "main", "resources": {"limits": {resource: str(devices)}}}],
        },
        "status": {"phase": phase},
    }


def dspool_pod(
    name: str, node: str, devices: int, deployment: str, replica: int, namespace: str = "ai"
) -> dict[str, Any]:
    labels = {"dspool.io/deployment": deployment, "dspool.io/replica": str(replica)}
    return k8s_pod(name, node, devices, namespace=namespace, labels=labels)


# ------------------------------------------------------------------------------------------- node_from_k8s


def test_ready_gpu_node_becomes_a_managed_node_with_label_memory_and_fabric() -> None:
    raw = k8s_node("h200-0", labels={"dspool.io/fabric": "rack-a", "nvidia.com/gpu.memory": "143771"})
    state = node_from_k8s(raw, CATALOG)
    assert state is not None
    assert (state.accelerator, state.vendor, state.resource_name) == ("H200-141G", Vendor.NVIDIA, "nvidia.com/gpu")
    assert state.allocatable == 8 and state.free == 8
    assert state.device_memory_gib == pytest.approx(143771 / 1024)
    assert state.fabric == "rack-a"


def test_ascend_node_is_identified_by_chip_label_and_uses_catalog_memory() -> None:
    state = node_from_k8s(k8s_node("atlas-0", "Ascend910B3"), CATALOG)
    assert state is not None
    assert (state.accelerator, state.resource_name) == ("Ascend910B3", "huawei.com/Ascend910")
    assert state.device_memory_gib == 64
    assert state.fabric is None


def test_an_atlas_800i_a2_reporting_64g_910b4_is_sized_with_64_gib() -> None:
    raw = k8s_node("atlas-1", "Ascend910B4", labels={"mind-cluster/npu-chip-memory": "64G"})
    state = node_from_k8s(raw, CATALOG)
    assert state is not None
    assert (state.accelerator, state.device_memory_gib) == ("Ascend910B4-64G", 64)


def test_custom_fabric_label_is_read() -> None:
    raw = k8s_node("h100-0", "H100-80G", labels={"topology.example.com/spine": "s1"})
    state = node_from_k8s(raw, CATALOG, fabric_label="topology.example.com/spine")
    assert state is not None and state.fabric == "s1"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (k8s_node("n", ready="False"), "not Ready"),
        (k8s_node("n", ready="Unknown"), "Ready unknown"),
        (k8s_node("n", unschedulable=True), "cordoned"),
        (
            k8s_node("n", taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
            "unreachable",
        ),
        (
            k8s_node("n", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]),
            "not-ready taint",
        ),
        (k8s_node("n", devices=0), "no allocatable devices"),
    ],
)
def test_unusable_nodes_are_not_managed(raw: dict[str, Any], why: str) -> None:
    assert node_from_k8s(raw, CATALOG) is None, why


def test_node_without_known_accelerator_is_not_managed() -> None:
    cpu_node = {
        "metadata": {"name": "cpu-0", "labels": {"kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {"allocatable": {"cpu": "32"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert node_from_k8s(cpu_node, CATALOG) is None


def test_node_without_ready_condition_is_not_managed() -> None:
    raw = k8s_node("n")
    raw["status"]["conditions"] = []
    assert node_from_k8s(raw, CATALOG) is None


def test_override_label_wins_over_gfd_labels() -> None:
    raw = k8s_node("n", "H100-80G", labels={"dspool.io/accelerator": "H800-80G"})
    state = node_from_k8s(raw, CATALOG)
    assert state is not None and state.accelerator == "H800-80G"


def test_prefer_no_schedule_unreachable_taint_does_not_exclude() -> None:
    raw = k8s_node("n", taints=[{"key": "node.kubernetes.io/unreachable", "effect": "PreferNoSchedule"}])
    assert node_from_k8s(raw, CATALOG) is not None


# -------------------------------------------------------------------------------------- pod_device_requests


def test_pod_requests_sum_containers_and_take_the_init_peak() -> None:
    pod: dict[str, Any] = {
        "spec": {
            "initContainers": [
                {"name": "warm", "resources": {"requests": {"nvidia.com/gpu": "4"}}},
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"nvidia.com/gpu": "1", "cpu": "2"}}},
                {"name": "b", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
            ],
        }
    }
    assert pod_device_requests(pod) == {"nvidia.com/gpu": 4}
    pod["spec"]["initContainers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "2"
    assert pod_device_requests(pod) == {"nvidia.com/gpu": 3}


def test_request_wins_over_limit_and_non_device_resources_are_ignored() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "resources": {
                        "requests": {"huawei.com/Ascend910": "2", "memory": "10Gi", "kubernetes.io/foo": "1"},
                        "limits": {"huawei.com/Ascend910": "2", "cpu": "4"},
                    }
                }
            ]
        }
    }
    assert pod_device_requests(pod) == {"huawei.com/Ascend910": 2}


def test_sidecar_init_containers_keep_their_devices() -> None:
    pod = {
        "spec": {
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
                {"name": "setup", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
            ],
            "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        }
    }
    # steady: main 1 + sidecar 1 = 2; init peak: setup 2 + sidecar 1 = 3
    assert pod_device_requests(pod) == {"nvidia.com/gpu": 3}


def test_pod_without_resources_requests_nothing() -> None:
    assert pod_device_requests({"spec": {"containers": [{"name": "x"}]}}) == {}
    assert pod_device_requests({}) == {}


@pytest.mark.parametrize(
    ("node", "phase", "active"),
    [
        ("n", "Running", True),
        ("n", "Pending", True),
        (None, "Pending", False),
        ("n", "Succeeded", False),
        ("n", "Failed", False),
    ],
)
def test_only_bound_non_terminal_pods_are_active(node: str | None, phase: str, active: bool) -> None:
    assert is_pod_active(k8s_pod("p", node, 1, phase=phase)) is active


def test_pod_being_deleted_still_holds_devices() -> None:
    pod = k8s_pod("p", "n", 1)
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert is_pod_active(pod)


# ---------------------------------------------------------------------------------------------- build_pool


def test_foreign_pods_count_as_used_and_reservations_as_reserved() -> None:
    nodes = [k8s_node("h200-0"), k8s_node("h200-1")]
    pods = [k8s_pod("train", "h200-0", 3), k8s_pod("done", "h200-0", 2, phase="Succeeded"), k8s_pod("x", "h200-1", 1)]
    reservations = [Reservation(deployment="ai/r1", replica=0, node="h200-1", devices=4)]
    pool = build_pool(nodes, pods, reservations, CATALOG)
    assert (pool.nodes["h200-0"].used, pool.nodes["h200-0"].reserved, pool.nodes["h200-0"].free) == (3, 0, 5)
    assert (pool.nodes["h200-1"].used, pool.nodes["h200-1"].reserved, pool.nodes["h200-1"].free) == (1, 4, 3)
    assert pool.reservations_of("ai/r1") == reservations


def test_bound_dspool_replica_is_counted_once() -> None:
    nodes = [k8s_node("h200-0")]
    reservations = [Reservation(deployment="ai/r1", replica=0, node="h200-0", devices=8)]
    before = build_pool(nodes, [], reservations, CATALOG).nodes["h200-0"]
    after = build_pool(nodes, [dspool_pod("r1-0", "h200-0", 8, "r1", 0)], reservations, CATALOG).nodes["h200-0"]
    assert (before.used, before.reserved, before.free) == (0, 8, 0)
    assert (after.used, after.reserved, after.free) == (0, 8, 0)


def test_dspool_pod_without_matching_reservation_counts_as_used() -> None:
    nodes = [k8s_node("h200-0"), k8s_node("h200-1")]
    reservations = [Reservation(deployment="ai/r1", replica=0, node="h200-0", devices=4)]
    pods = [
        dspool_pod("old-replica", "h200-0", 2, "r1", 5),  # replica 5 was scaled away, still terminating
        dspool_pod("moved", "h200-1", 2, "r1", 0),  # replica 0 is reserved on h200-0, not here
        dspool_pod("other-ns", "h200-0", 1, "r1", 0, namespace="team-b"),  # same name, other namespace
    ]
    pool = build_pool(nodes, pods, reservations, CATALOG)
    assert (pool.nodes["h200-0"].used, pool.nodes["h200-0"].reserved) == (3, 4)
    assert pool.nodes["h200-1"].used == 2


def test_pods_and_reservations_on_unmanaged_nodes_are_ignored() -> None:
    nodes = [k8s_node("h200-0"), k8s_node("cordoned", unschedulable=True)]
    pods = [k8s_pod("a", "cordoned", 4), k8s_pod("b", "cpu-node", 1), k8s_pod("c", None, 2)]
    reservations = [Reservation(deployment="ai/r1", replica=0, node="cordoned", devices=4)]
    pool = build_pool(nodes, pods, reservations, CATALOG)
    assert list(pool.nodes) == ["h200-0"]
    assert pool.nodes["h200-0"].free == 8
    assert pool.reservations_of("ai/r1") == []


def test_pod_requesting_another_vendors_resource_does_not_use_the_node() -> None:
    pool = build_pool([k8s_node("h200-0")], [k8s_pod("npu", "h200-0", 2, resource="huawei.com/Ascend910")], [], CATALOG)
    assert pool.nodes["h200-0"].used == 0


def test_totals_and_index_group_nodes_by_accelerator() -> None:
    nodes = [k8s_node("b-h200"), k8s_node("a-h200"), k8s_node("atlas", "Ascend910B3")]
    pool = build_pool(
        nodes, [k8s_pod("p", "a-h200", 2)], [Reservation(deployment="a/b", replica=0, node="atlas", devices=8)], CATALOG
    )
    assert [n.name for n in pool.by_accelerator()["H200-141G"]] == ["a-h200", "b-h200"]
    totals = pool.totals()
    assert (totals["H200-141G"].nodes, totals["H200-141G"].used, totals["H200-141G"].free) == (2, 2, 14)
    assert (totals["Ascend910B3"].reserved, totals["Ascend910B3"].free) == (8, 0)


def test_reservations_from_status_lists_one_per_replica_and_node() -> None:
    placement = ReplicaPlacement(
        replica=1,
        accelerator="H100-80G",
        precision=Precision.FP8,
        backend=Backend.VLLM,
        tensor_parallel=8,
        pipeline_parallel=2,
        max_model_len=32768,
        nodes=[NodeDevices(name="h100-0", devices=8), NodeDevices(name="h100-1", devices=8)],
    )
    assert reservations_from_status("ai", "r1", [placement]) == [
        Reservation(deployment="ai/r1", replica=1, node="h100-0", devices=8),
        Reservation(deployment="ai/r1", replica=1, node="h100-1", devices=8),
    ]


@settings(max_examples=60, deadline=None)
@given(
    pods=st.lists(
        st.tuples(
            st.integers(0, 3),  # node index
            st.integers(0, 8),  # devices
            st.sampled_from(["Running", "Pending", "Succeeded", "Failed"]),
            st.one_of(st.none(), st.integers(0, 2)),  # dspool replica index, None for a foreign pod
        ),
        max_size=20,
    ),
    reserved_replicas=st.sets(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=4),
)
def test_every_active_pod_is_counted_exactly_once(
    pods: list[tuple[int, int, str, int | None]], reserved_replicas: set[tuple[int, int]]
) -> None:
    nodes = [k8s_node(f"n{i}", devices=64) for i in range(4)]
    reservations = [Reservation(deployment="ai/m", replica=r, node=f"n{n}", devices=2) for r, n in reserved_replicas]
    raw_pods = [
        k8s_pod(f"p{i}", f"n{n}", d, phase=phase)
        if replica is None
        else {**dspool_pod(f"p{i}", f"n{n}", d, "m", replica), "status": {"phase": phase}}
        for i, (n, d, phase, replica) in enumerate(pods)
    ]
    pool = build_pool(nodes, raw_pods, reservations, CATALOG)
    for index in range(4):
        expected_used = sum(
            d
            for n, d, phase, replica in pods
            if n == index
            and phase in ("Running", "Pending")
            and (replica is None or (replica, n) not in reserved_replicas)
        )
        node = pool.nodes[f"n{index}"]
        assert node.used == expected_used
        assert node.reserved == 2 * sum(1 for _, n in reserved_replicas if n == index)


def test_build_pool_counts_40000_pods_on_5000_nodes() -> None:
    # Its speed is measured in bench/placement.py (build_pool column), not asserted here.
    accelerators = ["H200-141G", "H100-80G", "A100-80G", "L20-48G", "RTX4090-24G", "Ascend910B3"]
    nodes = [k8s_node(f"node-{i:05d}", accelerators[i % len(accelerators)]) for i in range(5000)]
    resources = {a: CATALOG.accelerator(a).resource_name for a in accelerators}
    pods = [
        k8s_pod(f"pod-{i}", f"node-{i % 5000:05d}", 1, resource=resources[accelerators[(i % 5000) % len(accelerators)]])
        for i in range(40000)
    ]
    reservations = [Reservation(deployment="ai/m", replica=i, node=f"node-{i:05d}", devices=1) for i in range(2000)]
    pool = build_pool(nodes, pods, reservations, CATALOG)
    assert len(pool.nodes) == 5000
    assert sum(n.used for n in pool.nodes.values()) == 40000
    assert sum(n.reserved for n in pool.nodes.values()) == 2000


def test_pods_of_a_dsd_with_a_name_longer_than_a_label_are_counted_once() -> None:
    from dspool.api import deployment_label_value

    long_name = "a-very-long-deepseek-deployment-name-that-does-not-fit-in-a-label-value"
    node = {
        "metadata": {"name": "rtx-0", "labels": CATALOG.accelerator("RTX4090-24G").node_labels(8)},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    pod = {
        "metadata": {"name": "p", "namespace": "ai",
                     "labels": {"dspool.io/deployment": deployment_label_value(long_name), "dspool.io/replica": "0"}},
        "spec": {"nodeName": "rtx-0", "containers": [{"resources": {"requests": {"nvidia.com/gpu": "4"}}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip
    reservation = Reservation(deployment=f"ai/{long_name}", replica=0, node="rtx-0", devices=4)
    state = build_pool([node], [pod], [reservation], CATALOG).nodes["rtx-0"]
    assert (state.used, state.reserved, state.free) == (0, 4, 4)


# ---------------------------------------------------------------------------------- booking: the invariant

OWNERS = ("ai/a", "ai/b")


def placement_on(replica: int, nodes: dict[str, int]) -> ReplicaPlacement:
    return ReplicaPlacement(
        replica=replica, accelerator="H200-141G", precision=Precision.FP8, backend=Backend.VLLM,
        tensor_parallel=max(nodes.values()), pipeline_parallel=len(nodes), max_model_len=4096,
        nodes=[NodeDevices(name=name, devices=devices) for name, devices in nodes.items()],
    )  # fmt: skip


def counts(pool: Pool) -> tuple[dict[str, tuple[int, int, int]], dict[str, list[Reservation]]]:
    nodes = {name: (n.used, n.reserved, n.free) for name, n in pool.nodes.items()}
    return nodes, {d: list(r) for d, r in pool.reservations.items()}


reserve_step = st.tuples(
    st.just("reserve"), st.sampled_from(OWNERS), st.integers(0, 3),
    st.dictionaries(st.sampled_from(["n0", "n1", "n2", "gone"]), st.integers(1, 8), min_size=1, max_size=2),
)  # fmt: skip
release_step = st.tuples(st.just("release"), st.sampled_from(OWNERS), st.integers(0, 3))
hold_step = st.tuples(st.just("hold"), st.sampled_from(["n0", "n1", "n2", "gone"]), st.integers(0, 8))
pods_step = st.tuples(st.just("hold_pods"), st.sampled_from(["n0", "n1", "n2"]), st.integers(0, 8),
                      st.sampled_from(["Running", "Failed"]))  # fmt: skip
trial_step = st.tuples(st.just("trial"), st.lists(st.one_of(reserve_step, release_step, hold_step), max_size=4))


@settings(max_examples=150, deadline=None)
@given(
    allocatable=st.lists(st.integers(1, 8), min_size=3, max_size=3),
    foreign=st.lists(st.integers(0, 8), min_size=3, max_size=3),
    steps=st.lists(st.one_of(reserve_step, release_step, hold_step, pods_step, trial_step), max_size=25),
)
def test_every_device_stays_in_exactly_one_bucket_whatever_is_booked_released_or_held(
    allocatable: list[int], foreign: list[int], steps: list[tuple[Any, ...]]
) -> None:
    nodes = [k8s_node(f"n{i}", devices=devices) for i, devices in enumerate(allocatable)]
    pods = [k8s_pod(f"job-{i}", f"n{i}", min(used, allocatable[i])) for i, used in enumerate(foreign) if used]
    pool = build_pool(nodes, pods, [], CATALOG)
    pool.free_index()  # built, so every change must reach it too
    held = False

    def apply(step: tuple[Any, ...]) -> None:
        nonlocal held
        kind = step[0]
        if kind == "reserve":
            _, owner, replica, wanted = step
            before = counts(pool)
            already = any(r.replica == replica for r in pool.reservations_of(owner))
            fits = all(name in pool.nodes and pool.nodes[name].free >= n for name, n in wanted.items())
            if already or not fits:
                with pytest.raises((InsufficientDevicesError, ValueError)):
                    pool.reserve(owner, placement_on(replica, wanted))
                assert counts(pool) == before  # refused: nothing booked
                return
            pool.reserve(owner, placement_on(replica, wanted))
            for name, devices in wanted.items():
                assert pool.nodes[name].reserved == before[0][name][1] + devices
                assert pool.nodes[name].free == before[0][name][2] - devices
        elif kind == "release":
            _, owner, replica = step
            pool.release(owner, replica)
            assert not any(r.replica == replica for r in pool.reservations_of(owner))
        elif kind == "hold":
            pool.hold({step[1]: step[2]})
            held = held or (step[1] in pool.nodes and step[2] > 0)
        elif kind == "hold_pods":
            _, name, devices, phase = step
            hold_pods(pool, [k8s_pod("leaving", name, devices, phase=phase)])
            held = held or (phase == "Running" and devices > 0)
        else:
            before = counts(pool)
            with pool.trial():
                for inner in step[1]:
                    apply(inner)
            assert counts(pool) == before  # a trial leaves no trace
        pool.check_invariant()
        for node in pool.nodes.values():
            assert node.free >= 0
            assert node.used + node.reserved + node.free == node.allocatable + node.overbooked
            if not held:  # only devices held for pods on their way out are ever booked twice
                assert node.overbooked == 0

    for step in steps:
        apply(step)


def test_the_invariant_check_catches_counts_changed_behind_the_pools_back() -> None:
    pool = build_pool([k8s_node("n0")], [], [], CATALOG)
    pool.reserve("ai/a", placement_on(0, {"n0": 4}))
    pool.check_invariant()
    pool.nodes["n0"].reserved -= 1
    with pytest.raises(PoolInvariantError, match="3 reserved but its reservations book 4"):
        pool.check_invariant()


def test_the_invariant_check_catches_a_used_count_the_free_index_was_not_told_of() -> None:
    pool = build_pool([k8s_node("n0"), k8s_node("n1")], [], [], CATALOG)
    pool.free_index()
    pool.hold({"n0": 2})
    pool.check_invariant()  # told through the pool: the index follows
    pool.nodes["n1"].used = 3  # behind the pool's back
    with pytest.raises(PoolInvariantError, match="n1: the free index says 8 free, the node 5"):
        pool.check_invariant()


def test_finished_pods_hold_no_devices() -> None:
    pool = build_pool([k8s_node("n0")], [], [], CATALOG)
    hold_pods(pool, [k8s_pod("done", "n0", 4, phase="Succeeded"), k8s_pod("failed", "n0", 2, phase="Failed"),
                    k8s_pod("unbound", None, 1), k8s_pod("leaving", "n0", 3)])  # fmt: skip
    assert (pool.nodes["n0"].used, pool.nodes["n0"].free) == (3, 5)


def test_the_node_cache_parses_a_node_again_only_when_its_view_changes_and_pools_do_not_share_nodes() -> None:
    catalog = CATALOG
    fleet = PoolFile(name="c", groups=[NodeGroup(name="l20", count=3, accelerator="L20-48G")])
    views = node_manifests(fleet, catalog)
    for view in views:
        view.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    cache = NodeCache()
    first = build_pool(views, [], [], catalog, node_cache=cache)
    first.nodes["l20-000"].reserved = 8  # a pass books devices in its own pool
    cordoned = {**views[1], "spec": {**views[1]["spec"], "unschedulable": True}}  # a new view: parsed again
    second = build_pool([views[0], cordoned, views[2]], [], [], catalog, node_cache=cache)
    assert second.nodes["l20-000"].reserved == 0 and second.nodes["l20-000"].free == 8
    assert set(second.nodes) == {"l20-000", "l20-002"}
    assert build_pool(views, [], [], catalog) == build_pool(views, [], [], catalog, node_cache=NodeCache())
