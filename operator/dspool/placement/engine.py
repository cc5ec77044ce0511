"""The placement engine: which accelerator type and which nodes each replica gets, and why.

:func:`place_replica` reads as its pipeline: filter the nodes (:mod:`.filters`), size the request on each
candidate type (:mod:`.candidates`), rank the types and choose nodes within them (:mod:`.cost` for
least-cost binpack, type tiers otherwise; :mod:`.choice` within a type), and explain (:mod:`.explain`).
Deciding changes no pool; booking is the pool's own (:func:`reserve`, :func:`release`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dspool.api import ReplicaPlacement, Strategy
from dspool.catalog import Catalog
from dspool.inventory import Pool
from dspool.placement import explain, readiness
from dspool.placement.candidates import (
    Sized,
    SizedTypes,
    TypeCandidate,
    allowed_types,
    candidate_types,
    type_tiers,
)
from dspool.placement.choice import TypeOutcome, evaluate
from dspool.placement.context import PlacementContext
from dspool.placement.cost import LeastCost, least_cost
from dspool.placement.request import Decision, DemandMix, ReplicaRequest, catalog_mix, new_decision, placement_from_plan
from dspool.placement.scarcity import MixShapes
from dspool.weights.estimate import Bandwidth
from dspool.weights.state import CacheView


def place_replica(
    pool: Pool,
    request: ReplicaRequest,
    catalog: Catalog,
    peers: Sequence[ReplicaPlacement] = (),
    demand: DemandMix | None = None,
    cache: CacheView | None = None,
    bandwidth: Bandwidth | None = None,
) -> Decision:
    """Decide where one replica goes without changing the pool; the reason always says why.

    ``peers`` are the other replicas of the same deployment (the pool's own reservations of that
    deployment count too); ``spread`` keeps away from their nodes. ``demand``: the models to keep room
    for (those of the DSDs in the cluster); default every catalog model. ``binpack`` without
    ``acceleratorTypes`` takes, among the types with the fewest nodes per replica, the one whose best-fit
    placement costs least: memory claimed plus what it takes from the other models (:mod:`.scarcity`).
    ``cache`` (the node model caches) with the request's ``cache_entry``: among equally good candidates,
    the one whose weights are ready first (:mod:`.readiness`; ``bandwidth`` for the estimate).
    """
    context = PlacementContext.of(pool)
    view = context.view(request)  # filter
    allowed = allowed_types(request, catalog)
    candidates = candidate_types(view, allowed)
    excluded = sum(view.excluded.get(t, 0) for t in (allowed if allowed is not None else view.excluded))
    filtered = explain.filter_note(pool, request, excluded) if excluded else ""
    if not candidates:
        label = explain.replica_label(request)
        return new_decision(None, explain.no_candidate_reason(label, allowed, list(view.types), pool, filtered))

    sized = context.sized_types(view, candidates, request, catalog)  # size
    least = request.strategy == Strategy.BINPACK and allowed is None
    warm = readiness.warmth(request, cache, bandwidth)
    peer_nodes = _peer_nodes(pool, request, peers) if request.strategy == Strategy.SPREAD else set()
    shapes = None
    if least:  # rank and choose
        shapes = context.mix_shapes(demand if demand is not None else catalog_mix(catalog), catalog)
        slack = readiness.READY_TOLERANCE if warm is not None else 0.0
        winner, outcomes, ranked = least_cost(
            sized.cost_groups(), shapes, request, pool.free_index(), slack, context.outcomes
        )
    else:
        winner, outcomes, ranked = _by_tiers(request, sized, peer_nodes, preferred=allowed is not None)

    if winner is not None:  # explain
        assert winner.choice is not None
        if warm is not None:
            return _ready_sooner(pool, request, warm, winner, outcomes, ranked, sized, peer_nodes, shapes, allowed)
        placement = placement_from_plan(winner.plan, [n.name for n in winner.choice.nodes], request.replica)
        if least:
            reason = explain.least_cost_reason(winner, ranked, sized.infeasible)
        else:
            reason = explain.success_reason(winner, ranked, allowed is not None, sized.infeasible, request.strategy)
        return new_decision(placement, reason, winner.plan)
    missing = [t for t in allowed if t not in view.types] if allowed is not None else []
    closest = outcomes[0].plan if outcomes else (sized.infeasible[0] if sized.infeasible else None)
    reason = explain.no_room_reason(explain.replica_label(request), outcomes, sized.infeasible, missing, filtered)
    return new_decision(None, reason, closest)


def _ready_sooner(
    pool: Pool,
    request: ReplicaRequest,
    warm: readiness.Warmth,
    winner: TypeOutcome,
    outcomes: list[TypeOutcome],
    ranked: list[TypeOutcome],
    sized: SizedTypes,
    peer_nodes: set[str],
    shapes: MixShapes | None,
    allowed: list[str] | None,
) -> Decision:
    """The decision when the caches are known: among the winner's equally good alternatives (least-cost: and
    the types within the tolerance), the one ready first, and the reason says so (:mod:`.readiness`)."""
    contenders, limit = readiness.contenders_within(outcomes, winner) if shapes is not None else ([], 0.0)
    packing = readiness.Packing(request.strategy, peer_nodes, shapes, pool.free_index(), limit)
    ready = readiness.prefer_ready(winner, contenders, request, warm, packing)
    chosen = ready.outcome
    assert chosen.choice is not None
    if chosen is not winner:
        head = explain.ready_type_reason(chosen, winner)
    elif shapes is not None:
        head = explain.least_cost_reason(winner, ranked, sized.infeasible)
    else:
        head = explain.success_reason(winner, ranked, allowed is not None, sized.infeasible, request.strategy)
    placement = placement_from_plan(chosen.plan, [n.name for n in chosen.choice.nodes], request.replica)
    return new_decision(placement, f"{head}; {explain.readiness_note(ready)}", chosen.plan)


def _by_tiers(request: ReplicaRequest, sized: SizedTypes, peer_nodes: set[str], preferred: bool) -> LeastCost:
    """binpack in the user's order, or spread: (winner, evaluated outcomes, every type in rank order).

    Tiers are tried in order; within a tier, the type with room and most free devices wins. ``spread``
    looks further: a node free of peers on any adequate type beats sharing one (``peer_nodes``: the nodes
    of the deployment's other replicas, spread only).
    """
    spread = request.strategy == Strategy.SPREAD
    tiers = type_tiers(sized.feasible, preferred)
    outcomes: list[TypeOutcome] = []
    winner: TypeOutcome | None = None
    evaluated_tiers = 0
    for tier in tiers:
        evaluated = [
            evaluate(type_view, plan, request.strategy, peer_nodes, free_total=len(tier) > 1)
            for type_view, plan in tier
        ]
        evaluated.sort(key=lambda o: (o.choice is None, -o.free_total, o.plan.accelerator))
        outcomes.extend(evaluated)
        evaluated_tiers += 1
        if spread:
            peer_free = [o for o in evaluated if o.choice is not None and not o.choice.peers_shared]
            if peer_free:
                winner = peer_free[0]
                break
        elif evaluated[0].choice is not None:
            winner = evaluated[0]
            break
    if winner is None and spread:
        winner = next((o for o in outcomes if o.choice is not None), None)
    ranked = outcomes + [TypeOutcome(view=v, plan=p) for tier in tiers[evaluated_tiers:] for v, p in tier]
    return winner, outcomes, ranked


def _peer_nodes(pool: Pool, request: ReplicaRequest, peers: Iterable[ReplicaPlacement]) -> set[str]:
    nodes = {n.name for p in peers if p.replica != request.replica for n in p.nodes}
    nodes.update(r.node for r in pool.reservations_of(request.deployment) if r.replica != request.replica)
    return nodes


def feasible_types(pool: Pool, request: ReplicaRequest, catalog: Catalog) -> list[TypeCandidate]:
    """The types the request may use and fits on, with their admitted nodes, in the order binpack tries them
    when nothing else decides: ``acceleratorTypes`` order, else fewest nodes per replica, then least memory.

    For callers that search the pool themselves (the rebalancer); does not change the pool.
    """
    context = PlacementContext.of(pool)
    view = context.view(request)
    allowed = allowed_types(request, catalog)
    sized = context.sized_types(view, candidate_types(view, allowed), request, catalog)
    ordered: list[Sized] = [item for tier in type_tiers(sized.feasible, allowed is not None) for item in tier]
    return [TypeCandidate(v.accelerator, plan, v.nodes, v.domains) for v, plan in ordered]


def reserve(pool: Pool, deployment: str, placement: ReplicaPlacement) -> None:
    """Book a placement's devices in the pool, all nodes or none (:meth:`Pool.reserve <dspool.inventory.Pool.reserve>`).

    Raises :class:`~dspool.inventory.InsufficientDevicesError` when a node is not in the pool or has fewer
    free devices than asked, and ``ValueError`` when the replica already holds a reservation.
    """
    pool.reserve(deployment, placement)


def release(pool: Pool, deployment: str, placement: ReplicaPlacement) -> None:
    """Give back the devices a replica holds in the pool (:meth:`Pool.release <dspool.inventory.Pool.release>`).

    Nodes that left the pool are skipped; the devices released are those the pool recorded for the
    replica (never more), so releasing twice is harmless.
    """
    pool.release(deployment, placement.replica)


def place_replicas(
    pool: Pool, requests: Iterable[ReplicaRequest], catalog: Catalog, demand: DemandMix | None = None
) -> list[Decision]:
    """Place requests one after another, reserving each success; the pool is left updated."""
    decisions: list[Decision] = []
    for request in requests:
        decision = place_replica(pool, request, catalog, demand=demand)
        if decision.placement is not None:
            reserve(pool, request.deployment, decision.placement)
        decisions.append(decision)
    return decisions
