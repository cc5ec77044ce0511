"""Choosing nodes within one accelerator type: best fit (binpack) or most free away from peers (spread) for a
single-node replica, and a gang of nodes in one fabric domain, all or nothing, for a multi-node replica.

Nodes are sorted by name and comparisons are strict, so ties keep the first name. For binpack over a view
that holds every node of its type, the pool's FreeIndex answers without a scan (the nodes a scan picks).
When no node fits, the choice says what came closest (:class:`Shortfall`); :mod:`.explain` words it.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from dspool.api import Strategy
from dspool.inventory import FreeIndex, NodeState
from dspool.placement.filters import TypeView
from dspool.placement.scarcity import Loss
from dspool.sizing import SizingPlan


@dataclass(frozen=True, slots=True)
class Choice:
    """Nodes picked for one replica on one type (one per pipeline stage), with the fit's description (shared
    between decisions while the type's counts stay the same: never changed in place)."""

    nodes: list[NodeState]
    domain: str
    leftover: int
    peers_shared: int


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a type has no room for a replica, and what came closest.

    ``stages == 1``: no node has ``per_stage`` free; ``closest`` holds the roomiest node. ``stages > 1``: no
    fabric domain has ``stages`` such nodes (``closest``: the roomiest domain's roomiest nodes), or the type
    has fewer nodes than stages (``pool_nodes``).
    """

    accelerator: str
    stages: int
    per_stage: int
    closest: tuple[tuple[str, int], ...] = ()  # (node, free)
    closest_domain: str | None = None
    fabric_labelled: bool = False
    pool_nodes: int | None = None


@dataclass(slots=True, eq=False)
class TypeOutcome:
    """What one accelerator type offers a request (compared by identity: one per type and decision)."""

    view: TypeView
    plan: SizingPlan
    choice: Choice | None = None
    shortfall: Shortfall | None = None  # why there is no room, when choice is None (None when not evaluated)
    free_total: int = 0
    loss: Loss | None = None  # what the choice costs the other models of the demand mix (binpack)
    cost: float = 0.0  # memory claimed + loss, GiB (binpack)

    @property
    def multi_node(self) -> bool:
        """Whether the replica spans nodes on this type."""
        return self.plan.nodes_per_replica > 1

    @property
    def memory_claimed(self) -> float:
        """Devices per replica x device memory, GiB."""
        return self.plan.devices_per_replica * self.view.device_memory_gib


Chosen = tuple[Choice | None, Shortfall | None]


def choose_single(
    view: TypeView,
    need: int,
    strategy: Strategy,
    peer_nodes: AbstractSet[str],
    index: FreeIndex[NodeState] | None = None,
) -> Chosen:
    """One node for a single-node replica."""
    if index is not None and strategy == Strategy.BINPACK and view.complete:
        fit = index.best_fit(view.accelerator, need)
        if fit is not None:
            return Choice([fit], fit.fabric_domain, fit.free - need, 0), None
        roomy = index.roomiest(view.accelerator)
        return None, Shortfall(view.accelerator, 1, need, ((roomy.name, roomy.free),) if roomy is not None else ())
    return _scan_single(view, need, strategy == Strategy.SPREAD, peer_nodes)


def _scan_single(view: TypeView, need: int, spread: bool, peer_nodes: AbstractSet[str]) -> Chosen:
    best: NodeState | None = None
    best_key: tuple[int, int] = (0, 0)
    roomiest: NodeState | None = None
    roomiest_free = -1
    for node in view.nodes:  # the hot loop of the engine: no properties, no allocations on the common path
        free = node.allocatable - node.used - node.reserved
        if free > roomiest_free:
            roomiest, roomiest_free = node, free
        if free < need:
            continue
        if spread:  # away from peers, then most free
            key = (int(node.name in peer_nodes), -free)
            if best is None or key < best_key:
                best, best_key = node, key
        elif best is None or free < best_key[1]:  # binpack: fewest free that still fit
            best, best_key = node, (0, free)
            if free == need:  # an exact fit cannot be beaten, and later names lose ties
                break
    if best is not None:
        return Choice([best], best.fabric_domain, best.free - need, int(best.name in peer_nodes)), None
    closest = ((roomiest.name, max(0, roomiest_free)),) if roomiest is not None else ()
    return None, Shortfall(view.accelerator, 1, need, closest)


def choose_gang(
    view: TypeView,
    stages: int,
    per_stage: int,
    strategy: Strategy,
    peer_nodes: AbstractSet[str],
    index: FreeIndex[NodeState] | None = None,
) -> Chosen:
    """Nodes in one fabric domain for a multi-node replica: binpack takes the domain leaving least over on
    the chosen nodes, then the fullest domain (keeps roomy fabrics whole); spread the one with fewest peers,
    then the roomiest nodes and domain."""
    if len(view.nodes) < stages:
        return None, Shortfall(view.accelerator, stages, per_stage, pool_nodes=len(view.nodes))
    spread = strategy == Strategy.SPREAD
    if index is not None and not spread and view.complete:
        return _indexed_gang(view, stages, per_stage, index)
    best: Choice | None = None
    best_key: tuple[Any, ...] = ()
    for domain, nodes in view.domains:  # hot: free counts read once per node, no sorting of whole fabrics
        picked, domain_free = _scan_domain(nodes, stages, per_stage, spread, peer_nodes)
        if len(picked) < stages:
            continue
        leftover = sum(free for free, _ in picked) - stages * per_stage
        shared = sum(node.name in peer_nodes for _, node in picked)
        key: tuple[Any, ...] = (shared, -leftover, -domain_free, domain) if spread else (leftover, domain_free, domain)
        if best is None or key < best_key:
            best = Choice(sorted((node for _, node in picked), key=lambda n: n.name), domain, leftover, shared)
            best_key = key
    if best is not None:
        return best, None
    return None, _gang_shortfall(view, stages, per_stage)


def _indexed_gang(view: TypeView, stages: int, per_stage: int, index: FreeIndex[NodeState]) -> Chosen:
    """binpack's gang over every node of the type, from the free index (the domain a scan would pick)."""
    found = index.best_gang(view.accelerator, view.domain_names, per_stage, stages)
    if found is None:
        return None, _gang_shortfall(view, stages, per_stage, index)
    domain, picked = found
    leftover = sum(free for free, _ in picked) - stages * per_stage
    return Choice(sorted((node for _, node in picked), key=lambda n: n.name), domain, leftover, 0), None


def _scan_domain(
    nodes: tuple[NodeState, ...], stages: int, per_stage: int, spread: bool, peer_nodes: AbstractSet[str]
) -> tuple[list[tuple[int, NodeState]], int]:
    """The ``stages`` nodes of one domain a gang would take (fewer when the domain has too few that fit),
    and the domain's free devices."""
    domain_free = 0
    fitting: list[tuple[int, NodeState]] = []
    for node in nodes:
        free = max(0, node.allocatable - node.used - node.reserved)
        domain_free += free
        if free >= per_stage:
            fitting.append((free, node))
    if len(fitting) < stages:
        return fitting, domain_free
    if spread:
        fitting.sort(key=lambda item: (item[1].name in peer_nodes, -item[0], item[1].name))
    else:
        fitting.sort(key=lambda item: (item[0], item[1].name))
    return fitting[:stages], domain_free


def _gang_shortfall(
    view: TypeView, stages: int, per_stage: int, index: FreeIndex[NodeState] | None = None
) -> Shortfall:
    """Only a refusal needs it: the fabric domain whose roomiest nodes come closest to holding the gang
    (``index``: the free index holds every node of the view's type, and finds them without sorting)."""
    closest: tuple[int, str, list[NodeState]] | None = None
    for domain, nodes in view.domains:
        if index is not None:
            roomiest = [node for _, node in index.domain_roomiest(view.accelerator, domain, stages)]
        else:
            roomiest = sorted(nodes, key=lambda n: (-n.free, n.name))[:stages]
        room = sum(min(n.free, per_stage) for n in roomiest)
        if closest is None or room > closest[0]:
            closest = (room, domain, roomiest)
    if closest is None:
        return Shortfall(view.accelerator, stages, per_stage, fabric_labelled=view.fabric_labelled)
    return Shortfall(
        view.accelerator,
        stages,
        per_stage,
        closest=tuple((n.name, n.free) for n in closest[2]),
        closest_domain=closest[1],
        fabric_labelled=view.fabric_labelled,
    )


def evaluate(
    view: TypeView,
    sized: SizingPlan,
    strategy: Strategy,
    peer_nodes: AbstractSet[str],
    free_total: bool,
    index: FreeIndex[NodeState] | None = None,
) -> TypeOutcome:
    """What the type offers the request: its choice of nodes or its shortfall (and, when asked, its free
    devices, which break ties between types)."""
    outcome = TypeOutcome(view=view, plan=sized)
    if free_total:
        outcome.free_total = type_free_total(view, index)
    if sized.nodes_per_replica > 1:
        outcome.choice, outcome.shortfall = choose_gang(
            view, sized.nodes_per_replica, sized.devices_per_node, strategy, peer_nodes, index
        )
    else:
        outcome.choice, outcome.shortfall = choose_single(view, sized.devices_per_node, strategy, peer_nodes, index)
    return outcome


def type_free_total(view: TypeView, index: FreeIndex[NodeState] | None) -> int:
    """Free devices over the type's admitted nodes."""
    if index is not None and view.complete:
        return index.free_total(view.accelerator)
    return sum(n.free for n in view.nodes)


def outcome_free_total(outcome: TypeOutcome, index: FreeIndex[NodeState]) -> int:
    """The outcome's free devices, computed once."""
    if not outcome.free_total:
        outcome.free_total = type_free_total(outcome.view, index)
    return outcome.free_total
