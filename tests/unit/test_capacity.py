"""Capacity headroom: the placeable counts equal what the placement engine really places."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st
from test_placement import CATALOG, node, pool_of, request

from dspool.inventory import Pool
from dspool.placement import place_replica, reserve
from dspool.placement.fleet import ALL_TYPES, placeable_replicas, stranded_devices, whole_free_nodes

MODELS = [m.id for m in CATALOG.models]
TYPES = ["H200-141G", "H100-80G", "A100-80G", "L20-48G", "RTX4090-24G", "Ascend910B3"]


def place_until_full(pool: Pool, model: str, accelerator_types: list[str] | None = None, limit: int = 400) -> int:
    """Place replicas one after another on a copy of the pool until the engine refuses one."""
    work = copy.deepcopy(pool)
    for index in range(limit):
        decision = place_replica(work, request(model, index, accelerator_types=accelerator_types or []), CATALOG)
        if decision.placement is None:
            return index
        reserve(work, "ai/m", decision.placement)
    raise AssertionError("the pool never filled")


def test_r1_fits_once_per_free_h200_and_once_per_pair_of_free_h100_in_one_fabric() -> None:
    pool = pool_of(
        node("h200-0", "H200-141G"),
        node("h200-1", "H200-141G", used=1),
        node("h100-0", "H100-80G", fabric="a"),
        node("h100-1", "H100-80G", fabric="a"),
        node("h100-2", "H100-80G", fabric="a"),
        node("h100-3", "H100-80G", fabric="b"),
    )
    counts = placeable_replicas(pool, [CATALOG.model("deepseek-r1")], CATALOG)["deepseek-r1"]
    assert counts == {"H200-141G": 1, "H100-80G": 1, ALL_TYPES: 2}
    assert counts[ALL_TYPES] == place_until_full(pool, "deepseek-r1")


def test_whole_free_nodes_and_stranded_devices_per_type() -> None:
    pool = pool_of(
        node("l20-0", "L20-48G"),
        node("l20-1", "L20-48G", used=5),  # 3 free: the 70B needs 4 per node, the 32B 2
        node("h200-0", "H200-141G", used=1),  # 7 free: R1 needs all 8
    )
    assert whole_free_nodes(pool) == {"H200-141G": 0, "L20-48G": 1}
    only_r1 = stranded_devices(pool, [CATALOG.model("deepseek-r1")], CATALOG)
    assert only_r1 == {"H200-141G": 7, "L20-48G": 11}  # R1 fits no L20 node: all 11 free L20 are stranded
    mix = [CATALOG.model("deepseek-r1-distill-llama-70b"), CATALOG.model("deepseek-r1-distill-qwen-32b")]
    assert stranded_devices(pool, mix, CATALOG)["L20-48G"] == 1  # 8 = 4+4; 3 = 2 + 1 left over


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(MODELS),
    st.lists(
        st.tuples(st.sampled_from(TYPES), st.integers(0, 8), st.sampled_from(["a", "b", None])),
        min_size=1,
        max_size=10,
    ),
)
def test_placeable_equals_what_the_engine_places(model: str, layout: list[tuple[str, int, str | None]]) -> None:
    pool = pool_of(
        *(node(f"n{i}", accelerator, used=used, fabric=fabric) for i, (accelerator, used, fabric) in enumerate(layout))
    )
    counts = placeable_replicas(pool, [CATALOG.model(model)], CATALOG)[model]
    assert counts[ALL_TYPES] == place_until_full(pool, model)
    for accelerator, count in counts.items():
        if accelerator != ALL_TYPES:
            assert count == place_until_full(pool, model, [accelerator]), accelerator
