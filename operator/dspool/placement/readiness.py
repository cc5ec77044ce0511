"""Time-to-ready: among candidates that pack equally well, the one whose weights are ready soonest.

Only when the caller gives the node caches (a :class:`~dspool.weights.state.CacheView`) and the request its
:class:`~dspool.weights.entries.CacheEntry`; without them the engine never comes here and decides as before.

Equally good packing means:

- on the winning type, another node (a gang: other nodes) that the engine's own rule rates the same:
  binpack the same free devices on a single node, or the same devices left over for a gang; spread the same
  peers shared and the same free devices;
- with least-cost binpack, another type of the same nodes-per-replica group whose cost (memory claimed plus
  the loss to the demand mix, :mod:`.cost`) is within :data:`READY_TOLERANCE` of the winner's.

Among those, the candidate ready first (:func:`dspool.weights.estimate.time_to_ready`: the bytes each node
lacks fetched at the bandwidth left, then loaded from local disk) wins; ties keep the engine's own choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dspool.api import Strategy
from dspool.inventory import FreeIndex, NodeState
from dspool.placement.candidates import COST_EPSILON_GIB
from dspool.placement.choice import Choice, TypeOutcome
from dspool.placement.request import ReplicaRequest
from dspool.placement.scarcity import MixShapes, placement_loss
from dspool.sizing import SizingPlan
from dspool.weights.entries import CacheEntry
from dspool.weights.estimate import (
    Bandwidth,
    ReadyEstimate,
    entry_in_precision,
    fetches_in_flight,
    time_to_ready,
)
from dspool.weights.state import CacheView

READY_TOLERANCE = 0.01  # a type whose packing costs at most 1% more than the best may win on readiness
NodeSet = tuple[NodeState, ...]


@dataclass
class Warmth:
    """What placement knows about the weights of one request: the caches, the bandwidths, the entry."""

    cache: CacheView
    bandwidth: Bandwidth
    entry: CacheEntry
    in_flight: int
    _entries: dict[str, CacheEntry] = field(default_factory=dict)

    def entry_for(self, request: ReplicaRequest, plan: SizingPlan) -> CacheEntry:
        """The entry a replica sized by ``plan`` serves (its precision decides)."""
        assert plan.precision is not None
        found = self._entries.get(plan.precision)
        if found is None:
            found = self._entries[plan.precision] = entry_in_precision(self.entry, request.model, plan.precision)
        return found

    def estimate(self, request: ReplicaRequest, plan: SizingPlan, nodes: Sequence[NodeState]) -> ReadyEstimate:
        """Time-to-ready of a replica sized by ``plan`` on ``nodes``."""
        entry = self.entry_for(request, plan)
        names = [n.name for n in nodes]
        return time_to_ready(entry.id, entry.size_bytes, names, self.cache, self.bandwidth, self.in_flight)

    def missing(self, request: ReplicaRequest, plan: SizingPlan, node: NodeState) -> int:
        """Bytes of the plan's entry ``node`` lacks."""
        entry = self.entry_for(request, plan)
        return max(0, entry.size_bytes - self.cache.bytes_done(node.name, entry.id))


def warmth(request: ReplicaRequest, cache: CacheView | None, bandwidth: Bandwidth | None) -> Warmth | None:
    """The weights context of a request, or None when the engine decides without it (no cache view, or a
    request whose weights are the user's own volume)."""
    if cache is None or request.cache_entry is None:
        return None
    return Warmth(cache, bandwidth or Bandwidth(), request.cache_entry, fetches_in_flight(cache))


@dataclass
class Readiness:
    """The outcome of :func:`prefer_ready`: the candidate chosen and the engine's own (blind) choice."""

    outcome: TypeOutcome  # its ``choice`` is the chosen nodes
    estimate: ReadyEstimate
    entry: CacheEntry
    blind: TypeOutcome
    blind_nodes: NodeSet
    blind_estimate: ReadyEstimate

    @property
    def changed(self) -> bool:
        """Whether readiness moved the replica away from the engine's own choice."""
        assert self.outcome.choice is not None
        return tuple(self.outcome.choice.nodes) != self.blind_nodes


@dataclass(frozen=True)
class Packing:
    """How the engine rates a candidate, to find the others it rates the same."""

    strategy: Strategy
    peer_nodes: set[str]
    shapes: MixShapes | None  # least-cost binpack: the demand mix, for the loss of other node sets
    index: FreeIndex[NodeState] | None
    limit: float  # least-cost binpack: the highest cost that still counts as equally good


def prefer_ready(
    winner: TypeOutcome,
    contenders: Sequence[TypeOutcome],
    request: ReplicaRequest,
    warm: Warmth,
    packing: Packing,
) -> Readiness:
    """Among the winner's equally good alternatives (and, least-cost, the contender types within the
    tolerance), the one ready first; the winner's own nodes on ties. Sets the chosen outcome's ``choice``."""
    assert winner.choice is not None
    blind_nodes = tuple(winner.choice.nodes)
    blind_estimate = warm.estimate(request, winner.plan, blind_nodes)
    best: tuple[float, int, TypeOutcome, Choice, ReadyEstimate] = (
        blind_estimate.seconds,
        0,
        winner,
        winner.choice,
        blind_estimate,
    )
    for rank, outcome in enumerate([winner, *contenders]):
        if outcome.choice is None:
            continue
        for choice in _alternatives(outcome, request, warm, packing):
            estimate = warm.estimate(request, outcome.plan, choice.nodes)
            if (estimate.seconds, rank) < best[:2]:
                best = (estimate.seconds, rank, outcome, choice, estimate)
            break  # alternatives come soonest-ready first: the first that packs as well is the type's best
    _, _, chosen, choice, estimate = best
    chosen.choice = choice
    return Readiness(chosen, estimate, warm.entry_for(request, chosen.plan), winner, blind_nodes, blind_estimate)


def contenders_within(outcomes: Sequence[TypeOutcome], winner: TypeOutcome) -> tuple[list[TypeOutcome], float]:
    """Least-cost binpack: the other types with room whose cost is within the tolerance of the winner's,
    in the engine's order, and that limit."""
    limit = winner.cost * (1 + READY_TOLERANCE) + COST_EPSILON_GIB
    same_group = winner.plan.nodes_per_replica
    return [
        o
        for o in outcomes
        if o is not winner and o.choice is not None and o.plan.nodes_per_replica == same_group and o.cost <= limit
    ], limit


def _alternatives(outcome: TypeOutcome, request: ReplicaRequest, warm: Warmth, packing: Packing) -> list[Choice]:
    """The node sets of the outcome's type the engine rates as its choice, soonest-ready first, those whose
    loss to the demand mix would push the cost past the limit left out."""
    assert outcome.choice is not None
    if outcome.multi_node:
        found = _gang_alternatives(outcome, request, warm, packing)
    else:
        found = _single_alternatives(outcome, request, warm, packing)
    return [c for c in found if _within_cost(outcome, c, request, packing)]


def _single_alternatives(outcome: TypeOutcome, request: ReplicaRequest, warm: Warmth, packing: Packing) -> list[Choice]:
    assert outcome.choice is not None
    chosen = outcome.choice.nodes[0]
    need = outcome.plan.devices_per_node
    peer = chosen.name in packing.peer_nodes if packing.strategy == Strategy.SPREAD else False
    equal = [
        n
        for n in outcome.view.nodes
        if n.free == chosen.free and (packing.strategy != Strategy.SPREAD or (n.name in packing.peer_nodes) == peer)
    ]
    equal.sort(key=lambda n: (warm.missing(request, outcome.plan, n), n.name))
    return [Choice([n], n.fabric_domain, n.free - need, int(n.name in packing.peer_nodes)) for n in equal]


def _gang_alternatives(outcome: TypeOutcome, request: ReplicaRequest, warm: Warmth, packing: Packing) -> list[Choice]:
    """Per fabric domain, the gang the engine's rule would take there with warm nodes first among equally
    free ones; kept when it leaves as much over (and, spread, shares as many peers) as the engine's choice."""
    assert outcome.choice is not None
    stages, per_stage = outcome.plan.nodes_per_replica, outcome.plan.devices_per_node
    spread = packing.strategy == Strategy.SPREAD
    target = (outcome.choice.peers_shared, outcome.choice.leftover)
    found: list[tuple[int, str, Choice]] = []
    for domain, nodes in outcome.view.domains:
        fitting = [n for n in nodes if n.free >= per_stage]
        if len(fitting) < stages:
            continue

        def order(n: NodeState) -> tuple[int, int, int, str]:
            missing = warm.missing(request, outcome.plan, n)
            if spread:  # fewest peers, most free, then warm first
                return (int(n.name in packing.peer_nodes), -n.free, missing, n.name)
            return (0, n.free, missing, n.name)  # best fit, then warm first

        picked = sorted(fitting, key=order)[:stages]
        leftover = sum(n.free for n in picked) - stages * per_stage
        shared = sum(n.name in packing.peer_nodes for n in picked)
        if (shared, leftover) != target:
            continue
        choice = Choice(sorted(picked, key=lambda n: n.name), domain, leftover, shared)
        missing = max(warm.missing(request, outcome.plan, n) for n in picked)
        found.append((missing, domain, choice))
    found.sort(key=lambda item: item[:2])
    return [choice for _, _, choice in found]


def _within_cost(outcome: TypeOutcome, choice: Choice, request: ReplicaRequest, packing: Packing) -> bool:
    """Least-cost binpack: whether these nodes keep the type's cost within the limit (their loss to the demand
    mix may differ from the engine's choice's). Other strategies rank by the rule alone."""
    engine_nodes = outcome.choice.nodes if outcome.choice is not None else []
    if packing.shapes is None or outcome.loss is None or choice.nodes == engine_nodes:
        return True
    taken = [(n, outcome.plan.devices_per_node) for n in choice.nodes]
    loss = placement_loss(packing.shapes, outcome.view.accelerator, taken, request.model.id, packing.index)
    return outcome.cost - outcome.loss.gib + loss.gib <= packing.limit
