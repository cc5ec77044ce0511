"""The placement engine: worked outcomes, filters, bookkeeping and properties over random pools."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspool.api import DeepSeekDeploymentSpec, NodeDevices, PlacementSpec, ReplicaPlacement, Strategy, Toleration
from dspool.catalog import Precision, builtin_catalog
from dspool.inventory import NodeState, Pool
from dspool.placement import (
    InsufficientDevicesError,
    ReplicaRequest,
    fragmentation,
    place_replica,
    place_replicas,
    release,
    reserve,
    scale_down_victims,
    tolerates,
)
from dspool.sizing import Backend

CATALOG = builtin_catalog()
R1 = "deepseek-r1"
SMALL = "deepseek-r1-distill-qwen-1.5b"
MEDIUM = "deepseek-r1-distill-qwen-14b"
LLAMA70 = "deepseek-r1-distill-llama-70b"


def node(
    name: str,
    accelerator: str,
    *,
    used: int = 0,
    allocatable: int = 8,
    fabric: str | None = None,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, Any]] | None = None,
) -> NodeState:
    spec = CATALOG.accelerator(accelerator)
    return NodeState(
        name=name,
        accelerator=spec.id,
        vendor=spec.vendor,
        resource_name=spec.resource_name,
        device_memory_gib=spec.memory_gib,
        allocatable=allocatable,
        used=used,
        fabric=fabric,
        labels=labels or {},
        taints=taints or [{"key": spec.resource_name, "value": "present", "effect": "NoSchedule"}],
    )


def pool_of(*nodes: NodeState) -> Pool:
    return Pool(nodes={n.name: n for n in nodes})


def request(model: str, replica: int = 0, deployment: str = "ai/m", **fields: Any) -> ReplicaRequest:
    return ReplicaRequest(deployment=deployment, replica=replica, model=CATALOG.model(model), **fields)


def placed_nodes(decision: Any) -> list[tuple[str, int]]:
    assert decision.placement is not None, decision.reason
    return [(n.name, n.devices) for n in decision.placement.nodes]


# --------------------------------------------------------------------------------------- worked outcomes


def test_r1_takes_a_whole_free_h200_node_over_a_two_node_h100_gang() -> None:
    pool = pool_of(
        node("h100-0", "H100-80G", fabric="rack-a"),
        node("h100-1", "H100-80G", fabric="rack-a"),
        node("h200-0", "H200-141G", used=2),
        node("h200-1", "H200-141G"),
    )
    decision = place_replica(pool, request(R1), CATALOG)
    assert placed_nodes(decision) == [("h200-1", 8)]
    assert decision.placement is not None
    assert (decision.placement.accelerator, decision.placement.precision) == ("H200-141G", Precision.FP8)
    assert (decision.placement.tensor_parallel, decision.placement.pipeline_parallel) == (8, 1)
    assert decision.reason.startswith("H200-141G h200-1 (8 of 8 free; best fit)")
    assert "H100-80G needs 16 devices over 2 nodes" in decision.reason


def test_r1_on_h100s_only_is_a_tp8_pp2_gang_in_one_fabric() -> None:
    pool = pool_of(
        node("h100-a0", "H100-80G", fabric="rack-a"),
        node("h100-a1", "H100-80G", fabric="rack-a", used=4),
        node("h100-b0", "H100-80G", fabric="rack-b"),
        node("h100-b1", "H100-80G", fabric="rack-b"),
    )
    decision = place_replica(pool, request(R1), CATALOG)
    assert placed_nodes(decision) == [("h100-b0", 8), ("h100-b1", 8)]
    assert decision.placement is not None
    assert (decision.placement.tensor_parallel, decision.placement.pipeline_parallel) == (8, 2)
    assert "gang of 2 nodes in fabric rack-b" in decision.reason


def test_r1_refused_when_each_fabric_has_only_one_free_h100_node() -> None:
    pool = pool_of(
        node("h100-a0", "H100-80G", fabric="rack-a"),
        node("h100-a1", "H100-80G", fabric="rack-a", used=8),
        node("h100-b0", "H100-80G", fabric="rack-b"),
    )
    decision = place_replica(pool, request(R1), CATALOG)
    assert decision.placement is None
    assert decision.reason.startswith("no room for deepseek-r1 replica 0: ")
    assert "H100-80G needs 2 nodes x 8 free in one fabric (best: rack-a: h100-a0 8 free, h100-a1 0 free)" in (
        decision.reason
    )


def test_refusal_names_what_was_needed_and_the_best_available_per_type() -> None:
    pool = pool_of(
        node("h200-0", "H200-141G", used=6),
        node("h200-1", "H200-141G", used=4),
        node("a100-0", "A100-80G"),
    )
    decision = place_replica(pool, request(R1, accelerator_types=["H200-141G", "A100-80G", "B200-180G"]), CATALOG)
    assert decision.placement is None
    assert decision.reason == (
        "no room for deepseek-r1 replica 0: H200-141G needs 8 free on one node (best: h200-1 with 4 free); "
        "A100-80G: 16 devices over 2 nodes, only 1 node in pool; not in pool or excluded: B200-180G"
    )


def test_refusal_when_no_allowed_type_is_in_the_pool() -> None:
    pool = pool_of(node("l20-0", "L20-48G"))
    decision = place_replica(pool, request(R1, accelerator_types=["h200-141g"]), CATALOG)
    assert decision.placement is None
    assert "none of the allowed types (H200-141G) is in the pool; usable types: L20-48G" in decision.reason


def test_refusal_quotes_the_planner_when_the_model_cannot_fit_a_type() -> None:
    pool = pool_of(node("r0", "RTX4090-24G", allocatable=4))
    decision = place_replica(pool, request(R1, allow_multi_node=False), CATALOG)
    assert decision.placement is None
    assert "RTX4090-24G: deepseek-r1" in decision.reason and "does not fit in 1 node x 4" in decision.reason


def test_distills_bin_pack_onto_partly_used_nodes_first() -> None:
    pool = pool_of(node("l20-a", "L20-48G"), node("l20-b", "L20-48G", used=5), node("l20-c", "L20-48G", used=7))
    decision = place_replica(pool, request(MEDIUM), CATALOG)
    assert placed_nodes(decision) == [("l20-c", 1)]  # the fullest node that still fits
    decisions = place_replicas(pool, [request(MEDIUM, replica=i) for i in range(4)], CATALOG)
    assert [placed_nodes(d)[0][0] for d in decisions] == ["l20-c", "l20-b", "l20-b", "l20-b"]
    assert pool.nodes["l20-a"].free == 8  # the empty node stays whole for a big replica


def test_small_model_goes_to_the_smallest_adequate_accelerator_not_the_h200() -> None:
    pool = pool_of(node("a-h200", "H200-141G"), node("l20-0", "L20-48G"), node("z-4090", "RTX4090-24G", used=7))
    decision = place_replica(pool, request(SMALL), CATALOG)
    assert placed_nodes(decision) == [("z-4090", 1)]
    assert "smallest adequate type" in decision.reason
    pool.hold({"z-4090": 1})  # a pod of another workload takes the last RTX 4090
    assert placed_nodes(place_replica(pool, request(SMALL), CATALOG)) == [("l20-0", 1)]


def test_single_node_plan_beats_a_smaller_multi_node_plan() -> None:
    # L20 claims less memory for R1 (24 x 45 GiB) than H200 (8 x 140 GiB) but needs 3 nodes over the network
    pool = pool_of(*(node(f"l20-{i}", "L20-48G") for i in range(3)), node("h200-0", "H200-141G"))
    assert placed_nodes(place_replica(pool, request(R1), CATALOG)) == [("h200-0", 8)]


def test_big_model_prefers_the_gang_with_fewest_nodes_over_less_memory() -> None:
    # R1 claims less memory as 5 x 8 RTX 4090 (960 GiB) than as 2 x 8 H100 (1,273 GiB), over 5 PCIe-only nodes
    pool = pool_of(
        *(node(f"h100-{i}", "H100-80G") for i in range(2)), *(node(f"rtx-{i}", "RTX4090-24G") for i in range(5))
    )
    decision = place_replica(pool, request(R1), CATALOG)
    assert placed_nodes(decision) == [("h100-0", 8), ("h100-1", 8)]
    assert "RTX4090-24G needs 40 devices over 5 nodes" in decision.reason


def test_accelerator_preference_order_is_followed() -> None:
    pool = pool_of(node("h200-0", "H200-141G"), node("l20-0", "L20-48G"))
    decision = place_replica(pool, request(SMALL, accelerator_types=["H200-141G", "L20-48G"]), CATALOG)
    assert placed_nodes(decision) == [("h200-0", 1)]
    assert "1st choice in acceleratorTypes" in decision.reason
    pool.hold({"h200-0": 8})
    decision = place_replica(pool, request(SMALL, accelerator_types=["H200-141G", "L20-48G"]), CATALOG)
    assert placed_nodes(decision) == [("l20-0", 1)]
    assert "2nd choice" in decision.reason and "H200-141G needs 1 free on one node" in decision.reason


def test_equal_types_tie_break_on_most_free_devices() -> None:
    pool = pool_of(node("l20-0", "L20-48G", used=6), node("l40s-0", "L40S-48G"), node("l40s-1", "L40S-48G"))
    assert placed_nodes(place_replica(pool, request(MEDIUM), CATALOG))[0][0] == "l40s-0"


def test_node_selector_restricts_nodes_and_is_reported() -> None:
    pool = pool_of(
        node("h200-0", "H200-141G", labels={"team": "a"}),
        node("h200-1", "H200-141G", labels={"team": "b"}, used=4),
    )
    decision = place_replica(pool, request(LLAMA70, node_selector={"team": "a"}), CATALOG)
    assert placed_nodes(decision) == [("h200-0", 2)]
    decision = place_replica(pool, request(R1, node_selector={"team": "b"}), CATALOG)
    assert decision.placement is None
    assert "1 node excluded by nodeSelector/taints" in decision.reason


def test_taints_need_tolerations_except_device_taints() -> None:
    reserved_taint = {"key": "dedicated", "value": "research", "effect": "NoSchedule"}
    pool = pool_of(
        node("h200-0", "H200-141G", taints=[reserved_taint, {"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
        node("h200-1", "H200-141G", taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}], used=4),
        node("h200-2", "H200-141G", taints=[{"key": "soft", "effect": "PreferNoSchedule"}], used=6),
    )
    decision = place_replica(pool, request(R1), CATALOG)
    assert decision.placement is None and "1 node excluded" in decision.reason
    tolerated = request(R1, tolerations=[Toleration(key="dedicated", operator="Equal", value="research")])
    assert placed_nodes(place_replica(pool, tolerated, CATALOG)) == [("h200-0", 8)]
    # PreferNoSchedule never blocks; device taints are always tolerated
    assert placed_nodes(place_replica(pool, request(LLAMA70), CATALOG)) == [("h200-2", 2)]


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (Toleration(operator="Exists"), {"key": "any", "effect": "NoExecute"}, True),
        (Toleration(key="k", operator="Exists"), {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        (Toleration(key="k", value="v"), {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        (Toleration(key="k", value="w"), {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
        (Toleration(key="k", operator="Exists", effect="NoExecute"), {"key": "k", "effect": "NoSchedule"}, False),
        (Toleration(key="other", operator="Exists"), {"key": "k", "effect": "NoSchedule"}, False),
        (Toleration(value="v"), {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
    ],
)
def test_toleration_matching_follows_kubernetes(toleration: Toleration, taint: dict[str, str], expected: bool) -> None:
    assert tolerates([toleration], taint) is expected


def test_spread_avoids_nodes_holding_peers_and_prefers_most_free() -> None:
    pool = pool_of(node("l20-0", "L20-48G", used=2), node("l20-1", "L20-48G", used=4), node("l20-2", "L20-48G"))
    decisions = place_replicas(pool, [request(MEDIUM, replica=i, strategy=Strategy.SPREAD) for i in range(4)], CATALOG)
    assert [placed_nodes(d)[0][0] for d in decisions] == ["l20-2", "l20-0", "l20-1", "l20-2"]
    assert "shares 1 node with a peer replica" in decisions[3].reason


def test_spread_only_counts_peers_of_the_same_deployment() -> None:
    pool = pool_of(node("l20-0", "L20-48G"), node("l20-1", "L20-48G", used=1))
    other = place_replica(pool, request(MEDIUM, deployment="ai/other"), CATALOG).placement
    assert other is not None
    reserve(pool, "ai/other", other)
    # ai/other holds l20-1 (best fit); our deployment has no peers yet, so spread takes the roomiest node
    decision = place_replica(pool, request(MEDIUM, strategy=Strategy.SPREAD), CATALOG)
    assert placed_nodes(decision) == [("l20-0", 1)]
    peer = decision.placement
    assert peer is not None
    decision = place_replica(pool, request(MEDIUM, replica=1, strategy=Strategy.SPREAD), CATALOG, peers=[peer])
    assert placed_nodes(decision) == [("l20-1", 1)]


def test_gang_goes_to_the_fullest_fabric_that_fits_keeping_roomy_fabrics_whole() -> None:
    pool = pool_of(
        *(node(f"a-h100-{i}", "H100-80G", fabric="rack-a") for i in range(4)),
        node("b-h100-0", "H100-80G", fabric="rack-b"),
        node("b-h100-1", "H100-80G", fabric="rack-b"),
        node("b-h100-2", "H100-80G", fabric="rack-b", used=5),
    )
    decision = place_replica(pool, request(R1), CATALOG)
    assert placed_nodes(decision) == [("b-h100-0", 8), ("b-h100-1", 8)]
    assert "0 left over" in decision.reason
    spread = place_replica(pool, request(R1, strategy=Strategy.SPREAD), CATALOG)
    assert placed_nodes(spread) == [("a-h100-0", 8), ("a-h100-1", 8)]


def test_unlabelled_nodes_form_their_own_fabric_domain() -> None:
    pool = pool_of(node("h100-0", "H100-80G", fabric="rack-a"), node("h100-1", "H100-80G"))
    decision = place_replica(pool, request(R1), CATALOG)
    assert decision.placement is None
    assert "in one fabric" in decision.reason


def test_without_fabric_labels_any_nodes_of_the_type_form_a_gang() -> None:
    pool = pool_of(node("h100-0", "H100-80G"), node("h100-1", "H100-80G"))
    assert placed_nodes(place_replica(pool, request(R1), CATALOG)) == [("h100-0", 8), ("h100-1", 8)]


def test_multi_node_disallowed_refuses_instead_of_spanning_nodes() -> None:
    pool = pool_of(node("h100-0", "H100-80G"), node("h100-1", "H100-80G"))
    decision = place_replica(pool, request(R1, allow_multi_node=False), CATALOG)
    assert decision.placement is None
    assert "multi-node off" in decision.reason


def test_request_from_spec_carries_placement_and_serving_fields() -> None:
    spec = DeepSeekDeploymentSpec(
        model="deepseek-r1-distill-llama-70b",
        replicas=2,
        precision="bf16",
        placement=PlacementSpec(strategy=Strategy.SPREAD, accelerator_types=["L20-48G"], node_selector={"a": "b"}),
    )
    built = ReplicaRequest.from_spec("ai", "llama", 1, spec, CATALOG)
    assert (built.deployment, built.replica, built.model.id) == ("ai/llama", 1, "deepseek-r1-distill-llama-70b")
    assert (built.sizing.precision, built.strategy, built.accelerator_types) == ("bf16", "spread", ["L20-48G"])
    assert built.node_selector == {"a": "b"}


# -------------------------------------------------------------------------------------------- bookkeeping


def h200_placement(replica: int, *nodes: tuple[str, int]) -> ReplicaPlacement:
    return ReplicaPlacement(
        replica=replica,
        accelerator="H200-141G",
        precision=Precision.FP8,
        backend=Backend.VLLM,
        tensor_parallel=nodes[0][1],
        pipeline_parallel=len(nodes),
        max_model_len=4096,
        nodes=[NodeDevices(name=n, devices=d) for n, d in nodes],
    )


def test_reserve_refuses_to_double_book_and_changes_nothing_on_failure() -> None:
    pool = pool_of(node("a", "H200-141G", used=4), node("b", "H200-141G"))
    with pytest.raises(InsufficientDevicesError, match="4 free"):
        reserve(pool, "ai/m", h200_placement(0, ("b", 8), ("a", 8)))
    assert (pool.nodes["a"].reserved, pool.nodes["b"].reserved) == (0, 0)
    with pytest.raises(InsufficientDevicesError, match="not in the pool"):
        reserve(pool, "ai/m", h200_placement(0, ("gone", 1)))
    reserve(pool, "ai/m", h200_placement(0, ("a", 4)))
    with pytest.raises(ValueError, match="already holds a reservation"):
        reserve(pool, "ai/m", h200_placement(0, ("b", 1)))


def test_release_gives_devices_back_once() -> None:
    pool = pool_of(node("a", "H200-141G"))
    placement = h200_placement(0, ("a", 8))
    reserve(pool, "ai/m", placement)
    assert pool.nodes["a"].free == 0
    release(pool, "ai/m", placement)
    release(pool, "ai/m", placement)
    assert (pool.nodes["a"].reserved, pool.nodes["a"].free) == (0, 8)
    assert pool.reservations_of("ai/m") == []


def test_place_replica_does_not_change_the_pool() -> None:
    pool = pool_of(node("h200-0", "H200-141G"), node("l20-0", "L20-48G", used=3))
    before = pool.model_dump()
    place_replica(pool, request(R1), CATALOG)
    assert pool.model_dump() == before


def test_scale_down_frees_the_replica_that_empties_a_node() -> None:
    pool = pool_of(node("a", "H200-141G", used=4), node("b", "H200-141G"), node("c", "H200-141G", used=6))
    placements = [h200_placement(0, ("a", 2)), h200_placement(1, ("b", 2)), h200_placement(2, ("c", 2))]
    for p in placements:
        reserve(pool, "ai/m", p)
    assert scale_down_victims(pool, placements, 1) == [1]  # b becomes a whole free node
    # then the one leaving the largest free block: a (2 used by it, 4 foreign) -> 4 free; c -> 2 free
    assert scale_down_victims(pool, placements, 2) == [1, 0]
    assert scale_down_victims(pool, placements, 5) == [1, 0, 2]
    assert scale_down_victims(pool, placements, 0) == []


def test_scale_down_prefers_highest_index_on_ties() -> None:
    pool = pool_of(node("a", "H200-141G"), node("b", "H200-141G"))
    placements = [h200_placement(0, ("a", 8)), h200_placement(1, ("b", 8))]
    for p in placements:
        reserve(pool, "ai/m", p)
    assert scale_down_victims(pool, placements, 1) == [1]


def test_fragmentation_is_the_share_of_free_devices_on_partly_used_nodes() -> None:
    pool = pool_of(
        node("h0", "H200-141G"),
        node("h1", "H200-141G", used=6),
        node("l0", "L20-48G", used=8),
        node("r0", "RTX4090-24G", used=1),
    )
    assert fragmentation(pool) == {"H200-141G": pytest.approx(2 / 10), "L20-48G": 0.0, "RTX4090-24G": 1.0}


# --------------------------------------------------------------------------------------------- properties

ACCELERATORS = ["H200-141G", "H100-80G", "L20-48G", "RTX4090-24G", "Ascend910B3"]
MODELS = [R1, LLAMA70, "deepseek-r1-distill-qwen-32b", MEDIUM, "deepseek-r1-distill-llama-8b", SMALL]

pools = st.lists(
    st.tuples(
        st.sampled_from(ACCELERATORS),
        st.sampled_from([4, 8]),
        st.integers(0, 8),
        st.sampled_from([None, "rack-a", "rack-b"]),
    ),
    min_size=1,
    max_size=12,
).map(
    lambda specs: pool_of(
        *(
            node(f"n{i:02d}", acc, allocatable=alloc, used=min(used, alloc), fabric=fabric)
            for i, (acc, alloc, used, fabric) in enumerate(specs)
        )
    )
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["place", "release"]),
        st.sampled_from(MODELS),
        st.sampled_from(list(Strategy)),
        st.integers(0, 50),
    ),
    max_size=25,
)


@settings(max_examples=80, deadline=None)
@given(pool=pools, ops=operations)
def test_no_node_is_ever_overbooked_and_gangs_are_all_or_nothing(
    pool: Pool, ops: list[tuple[str, str, Strategy, int]]
) -> None:
    live: list[ReplicaPlacement] = []
    for index, (action, model, strategy, pick) in enumerate(ops):
        if action == "release" and live:
            release(pool, "ai/m", live.pop(pick % len(live)))
        else:
            before = {name: n.reserved for name, n in pool.nodes.items()}
            decision = place_replica(pool, request(model, replica=index, strategy=strategy), CATALOG)
            assert decision.reason
            if decision.placement is None:
                continue
            placement = decision.placement
            assert len(placement.nodes) == placement.pipeline_parallel  # one stage per node, all of them
            assert len({n.name for n in placement.nodes}) == placement.pipeline_parallel
            assert all(n.devices == placement.tensor_parallel for n in placement.nodes)
            assert len({pool.nodes[n.name].accelerator for n in placement.nodes}) == 1
            if placement.pipeline_parallel > 1:
                assert len({pool.nodes[n.name].fabric_domain for n in placement.nodes}) == 1
            reserve(pool, "ai/m", placement)
            changed = {name for name, n in pool.nodes.items() if n.reserved != before[name]}
            assert changed == {n.name for n in placement.nodes}
            live.append(placement)
        for state in pool.nodes.values():
            assert state.used + state.reserved <= state.allocatable
    for placement in list(live):
        release(pool, "ai/m", placement)
    assert all(state.reserved == 0 for state in pool.nodes.values())


@settings(max_examples=40, deadline=None)
@given(pool=pools, models=st.lists(st.sampled_from(MODELS), max_size=12), strategy=st.sampled_from(list(Strategy)))
def test_same_pool_and_requests_give_the_same_decisions(pool: Pool, models: list[str], strategy: Strategy) -> None:
    twin = Pool(nodes={name: n.model_copy(deep=True) for name, n in reversed(list(pool.nodes.items()))})
    requests = [request(m, replica=i, strategy=strategy) for i, m in enumerate(models)]
    first = place_replicas(pool, requests, CATALOG)
    second = place_replicas(twin, copy.deepcopy(requests), CATALOG)
    assert [d.model_dump() for d in first] == [d.model_dump() for d in second]


@settings(max_examples=40, deadline=None)
@given(pool=pools, model=st.sampled_from(MODELS))
def test_a_small_model_is_refused_only_when_the_pool_is_full(pool: Pool, model: str) -> None:
    decision = place_replica(pool, request(model), CATALOG)
    if decision.placement is not None:
        return
    assert decision.reason.startswith(f"no room for {model} replica 0: ")
    # the 1.5B model fits one device of every type, so refusing it means no device is free
    if model == SMALL:
        for state in pool.nodes.values():
            assert state.free == 0


def test_a_node_added_or_removed_is_seen_by_the_next_decision() -> None:
    pool = pool_of(node("l20-0", "L20-48G", used=8))
    assert place_replica(pool, request(SMALL), CATALOG).placement is None
    pool.add_node(node("l20-1", "L20-48G"))
    assert placed_nodes(place_replica(pool, request(SMALL), CATALOG)) == [("l20-1", 1)]
    pool.remove_node("l20-1")
    decision = place_replica(pool, request(SMALL), CATALOG)
    assert decision.placement is None and "best: l20-0 with 0 free" in decision.reason
