"""Every sentence the placement engine says: where a replica went and why this type, what the other types
lacked, and why nothing fits. Reasons are for people ("needs 2 nodes x 8 free in one fabric; best: ...")."""

from __future__ import annotations

from collections.abc import Sequence

from dspool.api import Strategy
from dspool.inventory import Pool
from dspool.placement.candidates import memory_claimed
from dspool.placement.choice import Shortfall, TypeOutcome
from dspool.placement.readiness import READY_TOLERANCE, Readiness
from dspool.placement.request import ReplicaRequest
from dspool.sizing import SizingPlan
from dspool.weights.entries import GIB
from dspool.weights.estimate import ReadyEstimate

MAX_ALTERNATIVES_IN_REASON = 3


def replica_label(request: ReplicaRequest) -> str:
    """How a refusal names the replica, e.g. 'deepseek-r1 replica 0'."""
    return f"{request.model.id} replica {request.replica}"


def shortfall_text(shortfall: Shortfall | None) -> str:
    """Why a type has no room, e.g. 'H100-80G needs 2 nodes x 8 free in one fabric (best: ...)'."""
    if shortfall is None:
        return ""
    accelerator, stages, per_stage = shortfall.accelerator, shortfall.stages, shortfall.per_stage
    if stages == 1:
        best = (
            f"best: {shortfall.closest[0][0]} with {shortfall.closest[0][1]} free" if shortfall.closest else "no nodes"
        )
        return f"{accelerator} needs {per_stage} free on one node ({best})"
    if shortfall.pool_nodes is not None:
        nodes = shortfall.pool_nodes
        return (
            f"{accelerator}: {stages * per_stage} devices over {stages} nodes, "
            f"only {nodes} node{'s' if nodes != 1 else ''} in pool"
        )
    in_fabric = " in one fabric" if shortfall.fabric_labelled else ""
    detail = ""
    if shortfall.closest_domain is not None:
        listed = ", ".join(f"{name} {free} free" for name, free in shortfall.closest)
        detail = f" (best: {shortfall.closest_domain}: {listed})" if shortfall.fabric_labelled else f" (best: {listed})"
    return f"{accelerator} needs {stages} nodes x {per_stage} free{in_fabric}{detail}"


def shape(sized: SizingPlan) -> str:
    """A plan's footprint, e.g. '16 devices over 2 nodes' or '4 devices on one node'."""
    if sized.nodes_per_replica > 1:
        return f"{sized.devices_per_replica} devices over {sized.nodes_per_replica} nodes"
    return f"{sized.devices_per_replica} device{'s' if sized.devices_per_replica != 1 else ''} on one node"


def describe_choice(outcome: TypeOutcome, strategy: Strategy) -> str:
    """Where the replica goes, with each node's free devices and the kind of fit."""
    choice = outcome.choice
    assert choice is not None
    sized = outcome.plan
    fit = "most free" if strategy == Strategy.SPREAD else "best fit"
    if choice.peers_shared:
        fit += f", shares {choice.peers_shared} node{'s' if choice.peers_shared > 1 else ''} with a peer replica"
    if len(choice.nodes) == 1:
        node = choice.nodes[0]
        return f"{sized.accelerator} {node.name} ({node.free} of {node.allocatable} free; {fit})"
    nodes = ", ".join(f"{n.name} ({n.free} of {n.allocatable} free)" for n in choice.nodes)
    where = f" in fabric {choice.domain}" if outcome.view.fabric_labelled else ""
    return (
        f"{sized.accelerator} {sized.layout} gang of {len(choice.nodes)} nodes{where}: {nodes}; "
        f"{fit}, {choice.leftover} left over"
    )


def _ordinal(position: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(position if position < 20 else position % 10, "th")
    return f"{position}{suffix}"


def with_notes(head: str, notes: list[str]) -> str:
    """``head`` and at most MAX_ALTERNATIVES_IN_REASON notes ('N more' for the rest)."""
    shown = notes[:MAX_ALTERNATIVES_IN_REASON]
    if len(notes) > len(shown):
        shown.append(f"{len(notes) - len(shown)} more")
    return head + (f"; {'; '.join(shown)}" if shown else "")


def success_reason(
    winner: TypeOutcome, ranked: list[TypeOutcome], preferred: bool, infeasible: list[SizingPlan], strategy: Strategy
) -> str:
    """The reason of a decision taken by type order: where, why this type, and what the others lacked."""
    position = ranked.index(winner)
    if preferred:
        why = f"{_ordinal(position + 1)} choice in acceleratorTypes"
    elif position == 0 and len(ranked) > 1:
        why = "smallest adequate type"
    elif position == 0:
        why = "only type the model fits in the pool"
    elif strategy == Strategy.SPREAD:
        why = "smallest adequate type with a node free of peer replicas"
    else:
        why = "smallest adequate type with room"
    notes = [
        shortfall_text(o.shortfall) or f"{o.plan.accelerator} has room only on nodes holding peer replicas"
        for o in ranked[:position]
    ]
    notes += [f"{o.plan.accelerator} needs {shape(o.plan)}" for o in ranked[position + 1 :][:1]]
    notes += [f"{p.accelerator} too small" for p in infeasible]
    return with_notes(f"{describe_choice(winner, strategy)} — {why}", notes)


def least_cost_reason(winner: TypeOutcome, ranked: list[TypeOutcome], infeasible: list[SizingPlan]) -> str:
    """The reason of a least-cost binpack decision: where, why this type, and what the others lacked."""
    position = ranked.index(winner)
    passed_over = [o for o in ranked[:position] if o.choice is not None]
    notes: list[str] = []
    if passed_over:
        alternative = min(passed_over, key=lambda o: memory_claimed((o.view, o.plan)))
        why = _passed_over_why(winner, alternative)
        notes += [
            f"{o.plan.accelerator} nodes are where {o.loss.worst.describe()}"
            for o in passed_over
            if o is not alternative and o.loss is not None and o.loss.worst is not None
        ]
    elif position == 0 and len(ranked) > 1:
        why = "smallest adequate type"
    elif position == 0:
        why = "only type the model fits in the pool"
    else:
        why = "smallest adequate type with room"
    notes += [shortfall_text(o.shortfall) for o in ranked[:position] if o.choice is None]
    accelerator = winner.plan.accelerator
    later = next((o for o in ranked[position + 1 :] if o.choice is None or o.plan.accelerator != accelerator), None)
    if later is not None:
        notes.append(f"{later.plan.accelerator} needs {shape(later.plan)}")
    notes += [f"{p.accelerator} too small" for p in infeasible]
    return with_notes(f"{describe_choice(winner, Strategy.BINPACK)} — {why}", notes)


def _passed_over_why(winner: TypeOutcome, alternative: TypeOutcome) -> str:
    """Why a type with room that claims less memory (the least of those passed over) lost: what placing there
    would cost the other models."""
    loss = alternative.loss
    if loss is not None and loss.worst is not None:
        return (
            f"{winner.plan.accelerator} chosen over {alternative.plan.accelerator}: "
            f"{alternative.plan.accelerator} nodes are where {loss.worst.describe()}"
        )
    return f"{winner.plan.accelerator} chosen over {alternative.plan.accelerator}: more free devices"


def filter_note(pool: Pool, request: ReplicaRequest, excluded: int) -> str:
    """'N nodes excluded by nodeSelector/taints', telling apart the nodes the replica is avoiding."""
    avoided = min(excluded, sum(1 for name in set(request.avoid_nodes) if name in pool.nodes))
    filtered = excluded - avoided
    parts = [f"{filtered} node{'s' if filtered != 1 else ''} excluded by nodeSelector/taints"] if filtered else []
    if avoided:
        parts.append(f"{avoided} node{'s' if avoided != 1 else ''} avoided (the replica leaves or failed there)")
    return "; ".join(parts)


def no_candidate_reason(label: str, allowed: list[str] | None, usable: Sequence[str], pool: Pool, filtered: str) -> str:
    """Why no accelerator type is even a candidate (none allowed in the pool, or every node filtered out)."""
    if allowed is not None:
        listed = ", ".join(usable) or "none"
        why = f"none of the allowed types ({', '.join(allowed)}) is in the pool; usable types: {listed}"
    elif pool.nodes:
        why = "no accelerator node passes the nodeSelector/taints"
    else:
        why = "the pool has no usable accelerator nodes"
    extra = f"; {filtered}" if filtered else ""
    return f"no room for {label}: {why}{extra}"


def no_room_reason(
    label: str, outcomes: list[TypeOutcome], infeasible: list[SizingPlan], missing: list[str], filtered: str
) -> str:
    """Why no type had room: each type's shortfall, the types too small, those missing, the nodes filtered."""
    parts = [shortfall_text(o.shortfall) for o in outcomes]
    parts += [f"{p.accelerator}: {p.reason}" for p in infeasible]
    if missing:
        parts.append(f"not in pool or excluded: {', '.join(missing)}")
    if filtered:
        parts.append(filtered)
    return f"no room for {label}: {'; '.join(parts)}"


def duration(seconds: float) -> str:
    """A wait as people say it: '~55 min', '~2 h', '<1 min'."""
    if seconds < 60:
        return "<1 min"
    if seconds < 100 * 60:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def _node_names(estimate: ReadyEstimate) -> str:
    return "+".join(n.node for n in estimate.nodes)


def _weights_state(estimate: ReadyEstimate) -> str:
    if estimate.cached:
        return "weights cached"
    return f"fetches {estimate.missing_bytes / GIB:.0f} GiB"


def readiness_note(ready: Readiness) -> str:
    """How soon the chosen nodes serve, and when readiness changed the choice, what the engine's own choice
    would have waited: 'h200-003: weights cached, ready in ~6 min; h200-001 would fetch 641 GiB, ~63 min'."""
    chosen = ready.estimate
    note = f"{_node_names(chosen)}: {_weights_state(chosen)}, ready in {duration(chosen.seconds)}"
    if ready.changed:
        blind = ready.blind_estimate
        what = "weights cached" if blind.cached else f"would fetch {blind.missing_bytes / GIB:.0f} GiB"
        note += f"; {_node_names(blind)} {what}, {duration(blind.seconds)}"
    return note


def ready_type_reason(chosen: TypeOutcome, blind: TypeOutcome) -> str:
    """Why a type other than the cheapest won: it packs nearly as well and its weights are ready sooner."""
    return (
        f"{describe_choice(chosen, Strategy.BINPACK)} — {chosen.plan.accelerator} chosen over "
        f"{blind.plan.accelerator}: packing cost within {READY_TOLERANCE:.0%} and weights ready sooner"
    )
