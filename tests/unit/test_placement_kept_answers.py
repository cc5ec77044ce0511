"""What the placement engine keeps between decisions (each type's outcome while its counts are unchanged, the
free index's gangs, placements built without validation) never changes a decision."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_placement import node, pool_of

from dspool.api import NodeDevices, ReplicaPlacement
from dspool.catalog import builtin_catalog
from dspool.inventory import NodeState, Pool
from dspool.placement import Decision, ReplicaRequest, place_replica, placement_from_plan, release, reserve
from dspool.placement.request import new_decision

CATALOG = builtin_catalog()
MODELS = [
    "deepseek-r1",  # one H200 node, or a gang of 2 H100 / 3 L20
    "deepseek-r1-distill-llama-70b",
    "deepseek-r1-distill-qwen-32b",
    "deepseek-r1-distill-qwen-1.5b",
]


def mixed_nodes() -> list[NodeState]:
    """Two fabrics of H100s, L20s in two fabrics, one H200: gangs, spare nodes and single-node homes."""
    return [
        *(node(f"h100-{i}", "H100-80G", fabric=f"rack-{i % 2}") for i in range(5)),
        *(node(f"l20-{i}", "L20-48G", fabric=f"row-{i % 2}") for i in range(7)),
        node("h200-0", "H200-141G", used=1),
    ]


def request_for(model: int, replica: int) -> ReplicaRequest:
    return ReplicaRequest(deployment="ai/m", replica=replica, model=CATALOG.model(MODELS[model]))


operations = st.lists(
    st.tuples(st.sampled_from(["place", "release", "hold", "trial"]), st.integers(0, 3), st.integers(0, 12)),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(ops=operations)
def test_a_pool_that_kept_its_answers_decides_as_a_fresh_one_would(ops: list[tuple[str, int, int]]) -> None:
    pool = pool_of(*mixed_nodes())
    live: dict[int, ReplicaPlacement] = {}
    for step, (action, model, which) in enumerate(ops):
        target = sorted(pool.nodes)[which % len(pool.nodes)]
        if action == "place":
            decision = place_replica(pool, request_for(model, step), CATALOG)
            if decision.placement is not None:
                reserve(pool, "ai/m", decision.placement)
                live[step] = decision.placement
        elif action == "release" and live:
            release(pool, "ai/m", live.pop(sorted(live)[which % len(live)]))
        elif action == "hold":
            node_state = pool.nodes[target]
            pool.hold({target: max(0, min(model + 1, node_state.allocatable - node_state.used))})
        elif action == "trial":  # a rebalancing plan tries a placement and leaves no trace
            with pool.trial():
                tried = place_replica(pool, request_for(model, 1000 + step), CATALOG)
                if tried.placement is not None:
                    reserve(pool, "ai/m", tried.placement)
        fresh = Pool(nodes={name: n.model_copy() for name, n in pool.nodes.items()})
        for probe in range(len(MODELS)):
            kept = place_replica(pool, request_for(probe, 999), CATALOG)
            assert kept == place_replica(fresh, request_for(probe, 999), CATALOG)


@settings(max_examples=60, deadline=None)
@given(used=st.lists(st.integers(0, 8), min_size=7, max_size=7), need=st.integers(1, 8), count=st.integers(1, 4))
def test_the_free_index_finds_the_gang_and_the_roomiest_nodes_a_scan_finds(
    used: list[int], need: int, count: int
) -> None:
    nodes = [node(f"l20-{i}", "L20-48G", used=u, fabric=f"row-{i % 3}") for i, u in enumerate(used)]
    index = pool_of(*nodes).free_index()
    domains = ["row-0", "row-1", "row-2"]
    best: tuple[int, int, str] | None = None
    for domain in domains:  # the scan: per domain the best fits, then least left over, fullest domain
        members = [n for n in nodes if n.fabric == domain]
        fitting = sorted((n.free, n.name) for n in members if n.free >= need)[:count]
        if len(fitting) == count:
            key = (sum(free for free, _ in fitting) - count * need, sum(n.free for n in members), domain)
            best = key if best is None or key < best else best
        roomiest = sorted(members, key=lambda n: (-n.free, n.name))[:count]
        assert [n.name for _, n in index.domain_roomiest("L20-48G", domain, count)] == [n.name for n in roomiest]
    found = index.best_gang("L20-48G", domains, need, count)
    assert (found[0] if found else None) == (best[2] if best else None)
    if found is not None:
        assert found[1] == index.domain_best_fits("L20-48G", found[0], need, count)


def test_a_placement_built_without_validation_equals_a_validated_one() -> None:
    decision = place_replica(pool_of(*mixed_nodes()), request_for(0, 3), CATALOG)
    assert decision.placement is not None and decision.plan is not None
    built = placement_from_plan(decision.plan, ["h200-0"], 3)
    validated = ReplicaPlacement.model_validate(built.model_dump())
    assert built == validated
    unset = {k: v for k, v in built.model_dump().items() if k != "spec_hash"}  # as the engine always built it
    assert built.model_fields_set == ReplicaPlacement.model_construct(**unset).model_fields_set
    assert built.nodes == [NodeDevices(name="h200-0", devices=8)]
    assert built.wire() == validated.wire()
    assert new_decision(None, "why") == Decision(placement=None, reason="why", plan=None)
