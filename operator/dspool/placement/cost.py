"""Least-cost binpack: among the types a replica fits with the fewest nodes per replica, the one whose best-fit
placement costs least: memory claimed plus what it takes from the other models of the demand mix
(:mod:`.scarcity`)."""

from __future__ import annotations

from dspool.api import Strategy
from dspool.inventory import FreeIndex, NodeState
from dspool.placement.candidates import COST_EPSILON_GIB, CostGroups
from dspool.placement.choice import TypeOutcome, choose_gang, choose_single, outcome_free_total
from dspool.placement.context import Evaluated, KnownOutcomes, OutcomeTable
from dspool.placement.filters import TypeView
from dspool.placement.request import ReplicaRequest
from dspool.placement.scarcity import MixShapes, placement_loss
from dspool.sizing import SizingPlan

LeastCost = tuple[TypeOutcome | None, list[TypeOutcome], list[TypeOutcome]]
NO_PEERS: frozenset[str] = frozenset()


def least_cost(
    groups: CostGroups,
    shapes: MixShapes,
    request: ReplicaRequest,
    index: FreeIndex[NodeState],
    slack: float = 0.0,
    known: KnownOutcomes | None = None,
) -> LeastCost:
    """binpack without a preference order: (winner, evaluated outcomes, every type in rank order).

    ``groups``: the feasible types by nodes per replica (fewest first; the first group with room decides),
    each by memory claimed. Each type with room costs memory claimed + its loss to the demand mix; the
    lowest cost wins (ties: most free devices, then id). The loss is never negative, so once a type claims
    more memory than the best cost so far, it and the rest of the group cannot win. ``slack``: evaluate the
    types up to that share above the best cost too (the winner is the same; :mod:`.readiness` weighs them).
    ``known``: the outcomes of earlier decisions, for the types whose counts have not changed since.
    """
    table = known.table(index, shapes) if known is not None else {}
    model = request.model.id
    winner: TypeOutcome | None = None
    evaluated: list[TypeOutcome] = []
    ranked: list[TypeOutcome] = []
    for group in groups:
        if winner is not None:
            ranked += [TypeOutcome(v, p) for _, v, p in group]
            continue
        for memory, type_view, sized in group:
            if winner is not None and memory > winner.cost * (1 + slack) + COST_EPSILON_GIB:
                ranked.append(TypeOutcome(type_view, sized))
                continue
            choice, shortfall, loss = _best_fit(type_view, sized, shapes, model, index, table)
            if choice is None or loss is None:
                outcome = TypeOutcome(type_view, sized, choice, shortfall)
                evaluated.append(outcome)
                ranked.append(outcome)
                continue
            outcome = TypeOutcome(type_view, sized, choice, shortfall, loss=loss, cost=memory + loss.gib)
            evaluated.append(outcome)
            ranked.append(outcome)
            if winner is None or _cheaper(outcome, winner, index):
                winner = outcome
    return winner, evaluated, ranked


def _best_fit(
    type_view: TypeView,
    sized: SizingPlan,
    shapes: MixShapes,
    model: str,
    index: FreeIndex[NodeState],
    known: OutcomeTable,
) -> Evaluated:
    """The type's best-fit choice and its loss to the demand mix, or its shortfall; from ``known`` when the
    type's counts are those it was found with."""
    accelerator = type_view.accelerator
    # the requesting model matters only when one of the type's shapes is its own (the loss skips those)
    owner = model if model in shapes.models_by_type.get(accelerator, ()) else None
    key = (accelerator, sized.nodes_per_replica, sized.devices_per_node, owner)
    version = index.version(accelerator)
    found = known.get(key)
    if found is not None and found[0] is type_view and found[1] == version:
        return found[2]
    if sized.nodes_per_replica > 1:
        choice, shortfall = choose_gang(
            type_view, sized.nodes_per_replica, sized.devices_per_node, Strategy.BINPACK, NO_PEERS, index
        )
    else:
        choice, shortfall = choose_single(type_view, sized.devices_per_node, Strategy.BINPACK, NO_PEERS, index)
    loss = None
    if choice is not None:
        taken = [(n, sized.devices_per_node) for n in choice.nodes]
        loss = placement_loss(shapes, accelerator, taken, model, index)
    result = (choice, shortfall, loss)
    known[key] = (type_view, version, result)
    return result


def _cheaper(outcome: TypeOutcome, best: TypeOutcome, index: FreeIndex[NodeState]) -> bool:
    """Lower cost; on equal cost (within rounding), more free devices, then the lower accelerator id."""
    if outcome.cost < best.cost - COST_EPSILON_GIB:
        return True
    if outcome.cost > best.cost + COST_EPSILON_GIB:
        return False
    mine = (-outcome_free_total(outcome, index), outcome.plan.accelerator)
    return mine < (-outcome_free_total(best, index), best.plan.accelerator)
