"""Time-to-ready placement: among equally packed candidates, the one holding the weights wins, and says why."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dspool.api import DeepSeekDeploymentSpec, Strategy
from dspool.catalog import Precision, builtin_catalog
from dspool.inventory import NodeState, Pool
from dspool.placement import ReplicaRequest, place_replica, reserve
from dspool.weights.entries import CacheEntry, entry_for
from dspool.weights.estimate import Bandwidth, time_to_ready
from dspool.weights.state import CacheView, EntryState, NodeEntry, NodeModelCache

CATALOG = builtin_catalog()
R1 = "deepseek-r1"
MEDIUM = "deepseek-r1-distill-qwen-14b"
GIB = 1024**3


def node(name: str, accelerator: str, *, used: int = 0, fabric: str | None = None) -> NodeState:
    spec = CATALOG.accelerator(accelerator)
    return NodeState(
        name=name,
        accelerator=spec.id,
        vendor=spec.vendor,
        resource_name=spec.resource_name,
        device_memory_gib=spec.memory_gib,
        allocatable=8,
        used=used,
        fabric=fabric,
        taints=[{"key": spec.resource_name, "value": "present", "effect": "NoSchedule"}],
    )


def pool_of(*nodes: NodeState) -> Pool:
    return Pool(nodes={n.name: n for n in nodes})


def entry(model: str) -> CacheEntry:
    """The checkpoint placement serves: R1's FP8 original, the distills' BF16 ones."""
    precision = Precision.FP8 if model == R1 else Precision.BF16
    found = entry_for(DeepSeekDeploymentSpec(model=model), CATALOG.model(model), precision)
    assert found is not None
    return found


def request(model: str, with_entry: bool = True, **fields: Any) -> ReplicaRequest:
    return ReplicaRequest(
        deployment="ai/m",
        replica=0,
        model=CATALOG.model(model),
        cache_entry=entry(model) if with_entry else None,
        **fields,
    )


def cached(held: CacheEntry, *nodes: str, state: EntryState = EntryState.READY, done: int = 0) -> CacheView:
    return CacheView(
        nodes={
            name: NodeModelCache(
                node=name,
                capacity_bytes=2048 * GIB,
                entries={held.id: NodeEntry(entry=held.id, state=state, size_bytes=held.size_bytes, bytes_done=done)},
            )
            for name in nodes
        }
    )


def where(decision: Any) -> list[str]:
    assert decision.placement is not None, decision.reason
    return [n.name for n in decision.placement.nodes]


def three_h200s() -> Pool:
    return pool_of(*(node(f"h200-00{i}", "H200-141G") for i in (1, 2, 3)))


def test_a_warm_node_wins_over_equally_good_cold_ones_and_the_reason_says_why() -> None:
    blind = place_replica(three_h200s(), request(R1), CATALOG)
    assert where(blind) == ["h200-001"]
    decision = place_replica(three_h200s(), request(R1), CATALOG, cache=cached(entry(R1), "h200-003"))
    assert where(decision) == ["h200-003"]
    # 641 GiB at 200 MB/s is ~57 min, then ~6 min to load at 2 GB/s
    assert decision.reason.endswith("h200-003: weights cached, ready in ~6 min; h200-001 would fetch 641 GiB, ~63 min")
    assert decision.reason.startswith("H200-141G h200-003 (8 of 8 free; best fit)")


def test_a_node_half_fetched_beats_a_cold_one_and_the_estimate_counts_the_pool_wide_cap() -> None:
    held = entry(R1)
    half = cached(held, "h200-002", state=EntryState.FETCHING, done=held.size_bytes // 2)
    assert where(place_replica(three_h200s(), request(R1), CATALOG, cache=half)) == ["h200-002"]
    # ten fetches in flight share 1 GB/s: 100 MB/s each, below the 200 MB/s a node could take
    alone = time_to_ready(held.id, held.size_bytes, ["h200-001"], CacheView(), Bandwidth())
    crowded = time_to_ready(held.id, held.size_bytes, ["h200-001"], CacheView(), Bandwidth(), in_flight=9)
    assert crowded.nodes[0].fetch_seconds == pytest.approx(2 * alone.nodes[0].fetch_seconds)


def test_a_worse_packed_warm_node_does_not_win() -> None:
    # best fit for the 14B (TP 1 on H200) is the node with 2 free; the warm node is empty
    pool = pool_of(node("h200-001", "H200-141G", used=6), node("h200-002", "H200-141G"))
    decision = place_replica(pool, request(MEDIUM), CATALOG, cache=cached(entry(MEDIUM), "h200-002"))
    assert where(decision) == ["h200-001"]
    assert decision.reason.endswith("h200-001: fetches 28 GiB, ready in ~3 min")


def test_a_type_beyond_the_tolerance_does_not_win_on_readiness() -> None:
    # the 14B claims one H100 (80 GiB) or one H200 (141 GiB): far beyond 1% apart, so the cold H100 wins
    pool = pool_of(node("h100-001", "H100-80G"), node("h200-001", "H200-141G"))
    decision = place_replica(pool, request(MEDIUM), CATALOG, cache=cached(entry(MEDIUM), "h200-001"))
    assert where(decision) == ["h100-001"]


def test_a_gang_prefers_the_nodes_holding_the_entry() -> None:
    def h100s() -> Pool:
        return pool_of(*(node(f"h100-00{i}", "H100-80G", fabric="rack-a") for i in range(4)))

    assert where(place_replica(h100s(), request(R1), CATALOG)) == ["h100-000", "h100-001"]
    decision = place_replica(h100s(), request(R1), CATALOG, cache=cached(entry(R1), "h100-002", "h100-003"))
    assert where(decision) == ["h100-002", "h100-003"]
    assert "h100-002+h100-003: weights cached" in decision.reason
    assert "h100-000+h100-001 would fetch 1282 GiB" in decision.reason  # 641 GiB on each node


def test_a_spread_replica_prefers_the_warm_node_among_the_most_free() -> None:
    decision = place_replica(
        three_h200s(), request(MEDIUM, strategy=Strategy.SPREAD), CATALOG, cache=cached(entry(MEDIUM), "h200-002")
    )
    assert where(decision) == ["h200-002"]


def mixed_pool() -> Pool:
    types = ["H200-141G", "H100-80G", "A100-80G", "L20-48G", "RTX4090-24G", "Ascend910B3"]
    return pool_of(*(node(f"{t.lower()[:5]}-{i}", t, fabric=f"rack-{i % 2}") for t in types for i in range(4)))


@pytest.mark.parametrize("strategy", list(Strategy))
def test_without_a_cache_view_or_with_nothing_cached_the_decisions_do_not_change(strategy: Strategy) -> None:
    models = [m.id for m in CATALOG.models if m.id != "deepseek-v3"]
    rng = random.Random(3)
    stream = [(rng.choice(models), replica) for replica in range(60)]
    pools = [mixed_pool(), mixed_pool(), mixed_pool()]
    for model, replica in stream:
        plain = ReplicaRequest(deployment="ai/m", replica=replica, model=CATALOG.model(model), strategy=strategy)
        with_entry = plain.model_copy(update={"cache_entry": entry(model)})
        decisions = [
            place_replica(pools[0], plain, CATALOG),
            place_replica(pools[1], with_entry, CATALOG),  # an entry but no cache view
            place_replica(pools[2], with_entry, CATALOG, cache=CacheView()),  # a view where nothing is cached
        ]
        assert decisions[1] == decisions[0]
        assert decisions[2].placement == decisions[0].placement
        assert decisions[2].reason.startswith(decisions[0].reason)
        for pool, decision in zip(pools, decisions, strict=True):
            if decision.placement is not None:
                reserve(pool, f"ai/m{replica}", decision.placement)


def test_a_request_without_an_entry_ignores_the_caches() -> None:
    decision = place_replica(three_h200s(), request(R1, with_entry=False), CATALOG, cache=cached(entry(R1), "h200-003"))
    assert where(decision) == ["h200-001"] and "weights" not in decision.reason
