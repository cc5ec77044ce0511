"""What a placement costs the other models of the demand mix: the scarce-shape score of ``binpack``.

A replica placed on a node takes devices, and it can also take away a *home* of a bigger model: an 8-device
node that was whole is no longer a place for DeepSeek-R1 (TP8 on one H200 node, or one stage of a TP8 x PP2
gang on H100). Sub-node shapes (a TP4 70B on an 8-device server) fit any partly used node with room, so
they are plentiful; *whole-node shapes* need a node nobody touched, and a pool under churn has few. This
module prices what a placement takes from them, so the placement engine can prefer, among the accelerator
types a replica fits, the one where it hurts least.

The demand mix is the set of models the pool should keep room for: the models of the DeepSeekDeployments in
the cluster (pending ones included), or every catalog model when none is given. Each model is sized on each
accelerator type of the pool (default serving settings); the *whole-node shapes* are those taking all the
devices of a node (``per_stage`` = the server size) or a gang of nodes (``stages > 1``, one stage of
``per_stage`` devices per node, inside one fabric domain), and that some domain of the pool is big enough to
hold. For a candidate placement (nodes and the devices it takes on each) on type T, each whole-node shape of
another model on T costs:

- **homes broken**: a node that had room for a stage and no longer has ("crossed"): for a single-node
  shape ``per_stage - taken`` devices of that model's capacity; for a gang, when the crossing lowers the
  number of complete gangs the fabric domain can host, the whole gang (``stages * per_stage - taken``), else
  only the crossed stage (a spare node);
- **keep-away**: ``KEEP_AWAY`` (0.5) per device taken on T at all, broken node or not: every replica on a
  big model's home type delays the day its node is whole again (``bench/churn.py`` chose the value).

Both are weighted by the model's demand weight, by how good a home T is for it (its fewest devices per
replica over the pool's types / its devices per replica on T: R1 weighs 1 on H200, 1/2 on H100, 1/3 on
L20; a TP8 70B on 8 RTX 4090 weighs 1/4 against TP2 on H200) and by T's device memory, so the loss is in GiB,
the unit of the engine's existing "memory claimed" ranking: ``cost = devices x device memory + loss``. The
requesting model's own shapes are not counted, and the lowest cost wins among types with the same number of
nodes per replica. The loss is never negative, so memory claimed is a lower bound on the cost and the engine
stops scanning types once the next one claims more memory than the best cost found.

Pure; the placement context (:mod:`.context`) keeps the shapes of each mix until the node set changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dspool.catalog import Catalog, UnknownIdError
from dspool.inventory import FreeIndex, NodeState, Pool
from dspool.placement.request import DemandMix
from dspool.plancache import sized_plan
from dspool.sizing import SizingRequest

# Share of a whole-node shape's per-device weight charged for every device taken on its home type, whether
# or not the placement breaks a whole node (see the module docstring; measured in bench/churn.py).
KEEP_AWAY = 0.5


@dataclass(frozen=True)
class Shape:
    """How one model of the mix would sit on one accelerator type: ``stages`` nodes x ``per_stage`` devices."""

    model: str
    accelerator: str
    stages: int
    per_stage: int
    weight: float  # demand weight x home quality x device memory (GiB per device of capacity lost)
    node_devices: int  # the type's server size

    def describe(self) -> str:
        """E.g. 'deepseek-r1 fits on 2 nodes', 'deepseek-r1 fits on one node', '... fits in 4 devices'."""
        if self.stages > 1:
            return f"{self.model} fits on {self.stages} nodes"
        if self.per_stage >= self.node_devices:
            return f"{self.model} fits on one node"
        return f"{self.model} fits in {self.per_stage} devices of one node"


@dataclass(frozen=True)
class Loss:
    """What a candidate placement costs the other models, in GiB, and the shape that loses most."""

    gib: float
    worst: Shape | None


NO_LOSS = Loss(0.0, None)


@dataclass(frozen=True)
class MixShapes:
    """The mix's shapes per accelerator type of a pool, and the pool's fabric domains per type."""

    by_type: dict[str, tuple[Shape, ...]]
    domains: dict[tuple[str, str], tuple[NodeState, ...]]  # (accelerator, fabric domain) -> nodes
    models_by_type: dict[str, frozenset[str]]  # the models with a shape on each type


def mix_shapes(pool: Pool, demand: DemandMix, catalog: Catalog) -> MixShapes:
    """The whole-node shapes of the mix on every accelerator type of the pool (computed; the placement
    context keeps one per mix)."""
    groups = pool.by_accelerator()
    domains: dict[tuple[str, str], list[NodeState]] = {}
    for accelerator_id, nodes in groups.items():
        for node in nodes:
            domains.setdefault((accelerator_id, node.fabric_domain), []).append(node)
    largest_domain = {a: max(len(v) for (t, _), v in domains.items() if t == a) for a in groups}
    merged = _merged_shapes(_home_plans(groups, largest_domain, demand, catalog), groups, demand)
    by_type: dict[str, list[Shape]] = {a: [] for a in groups}
    for (accelerator_id, _, _), shape in merged.items():
        by_type[accelerator_id].append(shape)
    return MixShapes(
        by_type={a: tuple(sorted(s, key=lambda x: (-x.weight, x.model))) for a, s in by_type.items()},
        domains={k: tuple(v) for k, v in domains.items()},
        models_by_type={a: frozenset(shape.model for shape in s) for a, s in by_type.items()},
    )


def _home_plans(
    groups: Mapping[str, list[NodeState]], largest_domain: Mapping[str, int], demand: DemandMix, catalog: Catalog
) -> dict[str, dict[str, tuple[int, int]]]:
    """Per model of the mix, per type it fits: (stages, devices per stage) with default serving settings."""
    plans: dict[str, dict[str, tuple[int, int]]] = {}
    for model in demand.models:
        for accelerator_id, nodes in groups.items():
            try:
                accelerator = catalog.accelerator(accelerator_id)
            except UnknownIdError:
                continue
            memory = min(n.device_memory_gib for n in nodes)
            devices = max(n.allocatable for n in nodes)
            sized = sized_plan(model, accelerator, SizingRequest(), memory, devices)
            # a gang no fabric domain of the pool can ever hold is no home to protect
            if sized.feasible and sized.nodes_per_replica <= largest_domain[accelerator_id]:
                plans.setdefault(model.id, {})[accelerator_id] = (sized.nodes_per_replica, sized.devices_per_node)
    return plans


def _merged_shapes(
    plans: Mapping[str, Mapping[str, tuple[int, int]]], groups: Mapping[str, list[NodeState]], demand: DemandMix
) -> dict[tuple[str, int, int], Shape]:
    """(accelerator, stages, per_stage) -> the heaviest model with that whole-node shape: models with the same
    shape (R1 and V3) are one home to protect, not two. Sub-node shapes are left out (not scarce)."""
    merged: dict[tuple[str, int, int], Shape] = {}
    for model_id in sorted(plans):
        per_type = plans[model_id]
        fewest_devices = min(stages * per_stage for stages, per_stage in per_type.values())
        for accelerator_id, (stages, per_stage) in per_type.items():
            nodes = groups[accelerator_id]
            node_devices = max(n.allocatable for n in nodes)
            if stages == 1 and per_stage < node_devices:
                continue  # a sub-node shape fits any partly used node with room: not scarce
            memory = min(n.device_memory_gib for n in nodes)
            quality = fewest_devices / (stages * per_stage)
            shape = Shape(
                model=model_id,
                accelerator=accelerator_id,
                stages=stages,
                per_stage=per_stage,
                weight=demand.weight(model_id) * quality * memory,
                node_devices=node_devices,
            )
            known = merged.get((accelerator_id, stages, per_stage))
            if known is None or shape.weight > known.weight:
                merged[(accelerator_id, stages, per_stage)] = shape
    return merged


def placement_loss(
    shapes: MixShapes,
    accelerator: str,
    taken: Sequence[tuple[NodeState, int]],
    requesting_model: str,
    index: FreeIndex[NodeState] | None = None,
) -> Loss:
    """The loss (GiB) a placement taking ``taken`` (node, devices) on ``accelerator`` inflicts on the mix.

    The requesting model's own shapes are skipped. See the module docstring for the rule. ``index``: the
    pool's FreeIndex (counts a fabric domain's fitting nodes without a scan).
    """
    type_shapes = shapes.by_type.get(accelerator, ())
    if not type_shapes:
        return NO_LOSS
    devices_taken = sum(need for _, need in taken)
    before = [(node.allocatable - node.used - node.reserved, need, node) for node, need in taken]
    total = 0.0
    worst: Shape | None = None
    worst_gib = 0.0
    for shape in type_shapes:
        if shape.model == requesting_model:
            continue
        per_stage = shape.per_stage
        crossed: dict[str, int] = {}  # fabric domain -> nodes that no longer hold a stage
        taken_on_crossed = 0
        for free, need, node in before:
            if free >= per_stage > free - need:
                crossed[node.fabric_domain] = crossed.get(node.fabric_domain, 0) + 1
                taken_on_crossed += need
        lost = 0  # most placements break no home (nothing crossed): only the keep-away counts
        if crossed and shape.stages == 1:
            lost = sum(crossed.values()) * per_stage
        elif crossed:
            for domain, count in crossed.items():
                if index is not None:
                    fitting = index.domain_fitting(accelerator, domain, per_stage)
                else:
                    fitting = sum(
                        1
                        for n in shapes.domains.get((accelerator, domain), ())
                        if n.allocatable - n.used - n.reserved >= per_stage
                    )
                gangs_lost = fitting // shape.stages - (fitting - count) // shape.stages
                lost += max(gangs_lost * shape.stages * per_stage, count * per_stage)
        gib = (max(0, lost - taken_on_crossed) + KEEP_AWAY * devices_taken) * shape.weight
        total += gib
        if gib > worst_gib:
            worst, worst_gib = shape, gib
    return Loss(total, worst) if total else NO_LOSS
