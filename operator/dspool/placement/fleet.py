"""The pool as a whole: capacity headroom (what fits now, what no model of the demand can use), which replicas
to remove on scale-down, and fragmentation.

Pure functions of a :class:`~dspool.inventory.Pool` and the catalog, cheap enough for every pass at
5,000 nodes: nothing is placed, the counts follow the placement engine's own rules on copies of the free
counts.

- :func:`placeable_replicas`: how many more replicas of a model (default sizing, binpack, no
  nodeSelector) the engine would place, per accelerator type. Types are disjoint sets of nodes and the
  engine falls through to the next type when one is full, so the total is the sum over types. A
  single-node plan needing TP devices fits ``free // TP`` times on each node. A gang of PP nodes x TP
  devices stays in one fabric domain and takes the PP fitting nodes with the fewest free devices, exactly
  as :func:`dspool.placement.place_replica` picks them; domains are independent.
- :func:`stranded_devices`: free devices that no replica of the demand mix can use where they are (in
  the spirit of FGD, USENIX ATC'23): on each node, what is left after packing the mix's per-node shape
  that uses the most of its free devices; all of them when no model of the mix fits that type at all.
- :func:`whole_free_nodes`: nodes with every device free, what big replicas need.
- :func:`scale_down_victims`: the replicas whose removal leaves the pool least fragmented.
- :func:`fragmentation`: the share of free devices stranded on partly used nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from dspool.api import ReplicaPlacement
from dspool.catalog import Catalog, ModelSpec, UnknownIdError
from dspool.inventory import NodeState, Pool, devices_by_node
from dspool.placement.context import PlacementContext
from dspool.plancache import sized_plan
from dspool.sizing import SizingPlan, SizingRequest

ALL_TYPES = "all"


def type_plan(
    model: ModelSpec, accelerator: str, nodes: Sequence[NodeState], catalog: Catalog, sizing: SizingRequest
) -> SizingPlan | None:
    """The plan the engine would use for ``model`` on these nodes of one type (None when it cannot fit)."""
    try:
        spec = catalog.accelerator(accelerator)
    except UnknownIdError:
        return None
    memory = min(n.device_memory_gib for n in nodes)
    devices = max(n.allocatable for n in nodes)
    result = sized_plan(model, spec, sizing, memory, devices)
    return result if result.feasible else None


def _gangs_in_domain(free_counts: Iterable[int], stages: int, per_stage: int) -> int:
    """Gangs of ``stages`` distinct nodes x ``per_stage`` devices, taken as the engine takes them: each time
    the ``stages`` fitting nodes with the fewest free devices."""
    histogram = Counter(f for f in free_counts if f >= per_stage)
    gangs = 0
    while sum(histogram.values()) >= stages:
        picked: list[int] = []
        for free in sorted(histogram):
            take = min(histogram[free], stages - len(picked))
            picked += [free] * take
            if len(picked) == stages:
                break
        for free in picked:
            histogram[free] -= 1
            if not histogram[free]:
                del histogram[free]
            if free - per_stage >= per_stage:
                histogram[free - per_stage] += 1
        gangs += 1
    return gangs


def replicas_that_fit(plan: SizingPlan, nodes: Sequence[NodeState]) -> int:
    """How many replicas of ``plan`` the engine places on these nodes (one type) before it is full."""
    per_stage = plan.devices_per_node
    if plan.nodes_per_replica == 1:
        return sum(n.free // per_stage for n in nodes)
    domains: dict[str, list[int]] = {}
    for node in nodes:
        domains.setdefault(node.fabric_domain, []).append(node.free)
    return sum(_gangs_in_domain(free, plan.nodes_per_replica, per_stage) for free in domains.values())


def placeable_replicas(
    pool: Pool, models: Sequence[ModelSpec], catalog: Catalog, sizing: SizingRequest | None = None
) -> dict[str, dict[str, int]]:
    """Per model id: further replicas that fit, per accelerator type where the model fits, and ``all``."""
    sizing = sizing or SizingRequest()
    admitted = PlacementContext.of(pool).admitted_by_type()
    result: dict[str, dict[str, int]] = {}
    for model in models:
        per_type: dict[str, int] = {}
        for accelerator, nodes in admitted.items():
            sized = type_plan(model, accelerator, nodes, catalog, sizing)
            if sized is not None:
                per_type[accelerator] = replicas_that_fit(sized, nodes)
        per_type[ALL_TYPES] = sum(per_type.values())
        result[model.id] = per_type
    return result


def whole_free_nodes(pool: Pool) -> dict[str, int]:
    """Per accelerator type, the nodes whose every device is free."""
    return {
        accelerator: sum(1 for n in nodes if n.allocatable > 0 and n.free == n.allocatable)
        for accelerator, nodes in pool.by_accelerator().items()
    }


def stranded_devices(
    pool: Pool, demand: Sequence[ModelSpec], catalog: Catalog, sizing: SizingRequest | None = None
) -> dict[str, int]:
    """Per accelerator type, free devices no replica of the demand mix can use on the node they are on.

    A model's per-node shape on a type is its plan's TP (devices per node). A gang's shape counts on a node
    only while the node's fabric domain has enough nodes with that many free devices for the whole gang.
    A node's free devices ``f`` are used best by the shape ``d`` that leaves the least ``f mod d``; what is
    left is stranded. A type on which no model of the mix fits strands every free device.
    """
    sizing = sizing or SizingRequest()
    result: dict[str, int] = {}
    for accelerator, nodes in pool.by_accelerator().items():
        plans = [sized for model in demand if (sized := type_plan(model, accelerator, nodes, catalog, sizing))]
        gang_ready: set[tuple[int, int, str]] = set()  # (TP, PP, domain) where a whole gang still fits
        for per_stage, stages in {(p.devices_per_node, p.nodes_per_replica) for p in plans if p.nodes_per_replica > 1}:
            fitting = Counter(n.fabric_domain for n in nodes if n.free >= per_stage)
            gang_ready.update((per_stage, stages, domain) for domain, count in fitting.items() if count >= stages)
        stranded = 0
        for node in nodes:
            free = node.free
            shapes = {
                p.devices_per_node
                for p in plans
                if p.nodes_per_replica == 1
                or (p.devices_per_node, p.nodes_per_replica, node.fabric_domain) in gang_ready
            }
            fits = [free % shape for shape in shapes if shape <= free]
            stranded += min(fits) if fits else free
        result[accelerator] = stranded
    return result


def scale_down_victims(pool: Pool, placements: Sequence[ReplicaPlacement], count: int) -> list[int]:
    """Replica indexes to remove so that the pool is least fragmented afterwards, in removal order.

    Greedy, one replica at a time, on a copy of the free counts: remove the replica whose release
    (1) empties the most nodes (whole free nodes are what big replicas need), then (2) leaves the
    largest free block on one of its nodes, then (3) frees the most devices, then (4) has the highest
    index (the usual scale-down order). The pool is not modified; call :func:`release` for each victim.
    """
    free = {name: node.free for name, node in pool.nodes.items()}
    remaining = sorted(placements, key=lambda p: p.replica)
    victims: list[int] = []
    for _ in range(max(0, min(count, len(remaining)))):

        def score(placement: ReplicaPlacement) -> tuple[int, int, int, int]:
            emptied = 0
            largest = 0
            freed = 0
            for name, devices in devices_by_node(placement).items():
                node = pool.nodes.get(name)
                if node is None:
                    continue
                after = free[name] + devices
                emptied += int(after >= node.allocatable)
                largest = max(largest, after)
                freed += devices
            return (emptied, largest, freed, placement.replica)

        victim = max(remaining, key=score)
        for name, devices in devices_by_node(victim).items():
            if name in free:
                free[name] += devices
        remaining.remove(victim)
        victims.append(victim.replica)
    return victims


def fragmentation(pool: Pool) -> dict[str, float]:
    """Per accelerator type, the share of free devices stranded on partly used nodes (0.0 to 1.0).

    A free device is usable by the largest common shape (a replica taking a whole node, TP8 on an
    8-device server) only when its node is entirely free. Fragmentation = free devices on nodes that are
    not entirely free / all free devices of the type; 0.0 when the type has no free device.
    """
    result: dict[str, float] = {}
    for accelerator, nodes in pool.by_accelerator().items():
        total = 0
        stranded = 0
        for node in nodes:
            free = node.free
            total += free
            if free < node.allocatable:
                stranded += free
        result[accelerator] = stranded / total if total else 0.0
    return result
