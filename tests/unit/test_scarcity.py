"""Placement that protects scarce shapes: which type a replica gets when another model needs whole nodes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_placement import node, placed_nodes, pool_of, request

from dspool.api import ReplicaPlacement
from dspool.catalog import builtin_catalog
from dspool.inventory import Pool
from dspool.placement import DemandMix, ReplicaRequest, place_replica, release, reserve
from dspool.sizing import SizingRequest

CATALOG = builtin_catalog()
R1 = "deepseek-r1"
QWEN32 = "deepseek-r1-distill-qwen-32b"
LLAMA70 = "deepseek-r1-distill-llama-70b"
SMALL = "deepseek-r1-distill-qwen-1.5b"
DISTILLS = DemandMix.of(CATALOG.model(m) for m in (LLAMA70, QWEN32, SMALL))
# 32B with an 8K-token KV budget: one H100 holds it (61 GiB weights + 2 GiB KV + the 8192-token activation
# peak vLLM profiles on 80 GB GPUs), two L20s do; the scarcity tests are about which type it takes.
QWEN32_8K = SizingRequest(kv_cache_tokens=8192)


def test_32b_goes_to_l20_not_to_the_h100s_where_r1_fits_on_two_nodes() -> None:
    pool = pool_of(
        *(node(f"h100-{i}", "H100-80G", fabric="rack-a") for i in range(2)),
        *(node(f"l20-{i}", "L20-48G", fabric="rack-b") for i in range(3)),
    )
    decision = place_replica(pool, request(QWEN32, sizing=QWEN32_8K), CATALOG)
    assert placed_nodes(decision) == [("l20-0", 2)]
    assert "L20-48G chosen over H100-80G: H100-80G nodes are where deepseek-r1 fits on 2 nodes" in decision.reason


def test_70b_keeps_off_the_h200_where_r1_fits_on_one_node() -> None:
    # 2 x 140 GiB on H200 claims less memory than 4 x 80 GiB on H100, but the H200 is R1's only single-node home
    pool = pool_of(node("h200-0", "H200-141G"), node("h100-0", "H100-80G"), node("h100-1", "H100-80G", used=8))
    decision = place_replica(pool, request(LLAMA70), CATALOG)
    assert placed_nodes(decision) == [("h100-0", 4)]
    assert "H100-80G chosen over H200-141G: H200-141G nodes are where deepseek-r1 fits on one node" in decision.reason


def test_the_spare_node_of_a_fabric_is_taken_before_a_gang_is_broken() -> None:
    # three A100s hold one R1 gang and a spare; the two H100s are exactly one gang
    pool = pool_of(
        *(node(f"a100-{i}", "A100-80G", fabric="rack-b") for i in range(3)),
        *(node(f"h100-{i}", "H100-80G", fabric="rack-a") for i in range(2)),
    )
    decision = place_replica(pool, request(QWEN32), CATALOG)
    assert decision.placement is not None and decision.placement.accelerator == "A100-80G"
    assert "A100-80G chosen over H100-80G" in decision.reason
    reserve(pool, "ai/m", decision.placement)
    r1 = place_replica(pool, request(R1, deployment="ai/r1"), CATALOG)
    assert r1.placement is not None and r1.placement.accelerator == "H100-80G"  # both gangs still there


def test_a_broken_h100_is_filled_before_a_whole_l20_is_touched() -> None:
    # the partly used H100 holds no R1 stage any more; a whole L20 is still part of R1's 3-node gang
    pool = pool_of(
        node("h100-0", "H100-80G", fabric="a", used=3),
        node("h100-1", "H100-80G", fabric="a"),
        *(node(f"l20-{i}", "L20-48G", fabric="b") for i in range(3)),
    )
    assert placed_nodes(place_replica(pool, request(QWEN32, sizing=QWEN32_8K), CATALOG)) == [("h100-0", 1)]


def test_without_a_big_model_in_the_demand_mix_the_smallest_adequate_type_wins() -> None:
    pool = pool_of(
        *(node(f"h100-{i}", "H100-80G", fabric="rack-a") for i in range(2)),
        *(node(f"l20-{i}", "L20-48G", fabric="rack-b") for i in range(3)),
    )
    decision = place_replica(pool, request(QWEN32, sizing=QWEN32_8K), CATALOG, demand=DISTILLS)
    assert placed_nodes(decision) == [("h100-0", 1)]
    assert "smallest adequate type" in decision.reason


def test_accelerator_types_stay_authoritative() -> None:
    pool = pool_of(node("h200-0", "H200-141G"), node("h100-0", "H100-80G"))
    decision = place_replica(pool, request(LLAMA70, accelerator_types=["H200-141G", "H100-80G"]), CATALOG)
    assert placed_nodes(decision) == [("h200-0", 2)]
    assert "1st choice in acceleratorTypes" in decision.reason


def test_the_small_model_prefers_a_type_no_big_model_needs() -> None:
    pool = pool_of(node("h200-0", "H200-141G", used=4), node("rtx-0", "RTX4090-24G", allocatable=4))
    assert placed_nodes(place_replica(pool, request(SMALL), CATALOG)) == [("rtx-0", 1)]


# ------------------------------------------------------------------------------------------ the free index

operations = st.lists(
    st.tuples(st.sampled_from(["place", "release", "foreign pod", "copy"]), st.integers(0, 7), st.integers(1, 4)),
    max_size=40,
)


def _scan_best_fit(pool: Pool, need: int) -> str | None:
    fitting = [n for n in sorted(pool.nodes.values(), key=lambda n: n.name) if n.free >= need]
    return min(fitting, key=lambda n: n.free).name if fitting else None


def _scan_domain(pool: Pool, domain: str, need: int) -> list[tuple[int, str]]:
    """A fabric's nodes with room for ``need``, by (free, name): the order a gang takes them in (binpack)."""
    return sorted((n.free, n.name) for n in pool.nodes.values() if n.fabric == domain and n.free >= need)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_the_free_index_always_answers_what_a_scan_would(ops: list[tuple[str, int, int]]) -> None:
    pool = pool_of(*(node(f"l20-{i}", "L20-48G", fabric=f"rack-{i % 2}") for i in range(8)))
    pool.free_index()
    live: list[ReplicaPlacement] = []
    for index, (action, which, devices) in enumerate(ops):
        target = pool.nodes[f"l20-{which}"]
        if action == "place":
            model = CATALOG.model(LLAMA70 if devices > 2 else SMALL)
            decision = place_replica(pool, ReplicaRequest(deployment="ai/m", replica=index, model=model), CATALOG)
            if decision.placement is not None:
                reserve(pool, "ai/m", decision.placement)
                live.append(decision.placement)
        elif action == "release" and live:
            release(pool, "ai/m", live.pop(which % len(live)))
        elif action == "foreign pod":  # what reconcile does for a terminating pod: held as used
            pool.hold({target.name: min(devices, target.allocatable - target.used)})
        else:
            copy = target.model_copy()
            copy.used = copy.allocatable  # a copy's changes must not reach the pool's index
        for need in (1, 2, 4, 8):
            found = pool.free_index().best_fit("L20-48G", need)
            assert (found.name if found else None) == _scan_best_fit(pool, need)
        assert pool.free_index().free_total("L20-48G") == sum(n.free for n in pool.nodes.values())
        for domain in ("rack-0", "rack-1"):  # what a gang's choice and its loss to the mix read
            free_index = pool.free_index()
            free = sum(n.free for n in pool.nodes.values() if n.fabric == domain)
            assert free_index.domain_free("L20-48G", domain) == free
            for need in (1, 2, 4, 8):
                scanned = _scan_domain(pool, domain, need)
                assert free_index.domain_fitting("L20-48G", domain, need) == len(scanned)
                picked = free_index.domain_best_fits("L20-48G", domain, need, 3)
                assert [(f, n.name) for f, n in picked] == scanned[:3]
