"""Rebalancing inside a reconcile pass: start plans for refused replicas, and drive moves in flight. Pure.

:mod:`dspool.rebalance` plans moves and knows their state machine; this module is where a pass meets it.

- :func:`start_plans` (once per pass, after every DSD was reconciled): for each replica the pass refused,
  ask :func:`dspool.rebalance.plan_rebalance` for moves of other DSDs. ``dry-run`` only reports the plan;
  ``on`` books every destination in the pool (all or none) and returns, per moved DSD, the destination
  placements and ``status.moves`` records to write *before* any workload exists, as for every placement.
- :func:`advance_moves` (inside :func:`dspool.reconcile.reconcile` of a DSD with moves): observes each
  move (destination booked? new copy Ready? old replica gone?) and applies what
  :func:`dspool.rebalance.next_move_step` says: remove the old replica only while the new copy serves,
  roll back (release the destination) when it is not Ready in time or its node is gone.

A DSD's new copies in flight do not count towards its replicas (no scale-down takes them, no second
replica is placed for them); once the old replica is removed the new copy is an ordinary replica.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from dspool.api import (
    REPLICA_LABEL,
    DeepSeekDeploymentSpec,
    MoveState,
    ReplicaMove,
    ReplicaPlacement,
    placements_from_status,
)
from dspool.catalog import Catalog
from dspool.inventory import TERMINAL_PHASES, Pool
from dspool.placement import DemandMix, InsufficientDevicesError, ReplicaRequest
from dspool.rebalance import (
    TERMINAL_STATES,
    MoveAction,
    MoveFacts,
    RebalancePlan,
    RebalancePolicy,
    ResidentDeployment,
    book_destinations,
    next_move_step,
    plan_rebalance,
)

IN_FLIGHT_STATES = frozenset(
    {MoveState.PLANNED, MoveState.DESTINATION_RESERVED, MoveState.NEW_REPLICA_STARTING, MoveState.NEW_REPLICA_READY}
)


class RebalanceMode(StrEnum):
    """``dspool run --rebalance``: the pool-wide consent."""

    OFF = "off"
    DRY_RUN = "dry-run"  # plan and say what would move; move nothing
    ON = "on"


@dataclass
class MoveEvent:
    """An event for the DSD whose replica moves (the pass posts it); ``devices`` = devices a move freed."""

    type: str
    reason: str
    message: str
    devices: int = 0


def moves_from_status(status: Mapping[str, Any] | None) -> list[ReplicaMove]:
    """The well-formed ``status.moves`` entries of a stored status (malformed ones skipped)."""
    moves = []
    for raw in (status or {}).get("moves") or []:
        try:
            moves.append(ReplicaMove.model_validate(raw))
        except ValidationError:
            continue
    return moves


def _seconds_since(started_at: str | None, now: datetime) -> float:
    if not started_at:
        return 0.0
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - started).total_seconds())


def _live_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]


@dataclass
class MovesOutcome:
    """What :func:`advance_moves` changed: the moves to store, events, and the new copies still in flight."""

    moves: list[ReplicaMove]
    events: list[MoveEvent] = field(default_factory=list)
    in_flight_copies: set[int] = field(default_factory=set)


def advance_moves(
    deployment: str,
    moves: Sequence[ReplicaMove],
    placements: dict[int, ReplicaPlacement],
    pods_by_replica: Mapping[int, Sequence[Mapping[str, Any]]],
    pool: Pool,
    now: datetime,
    is_ready: Callable[[ReplicaPlacement, Sequence[Mapping[str, Any]]], bool],
    policy: RebalancePolicy | None = None,
) -> MovesOutcome:
    """Drive one DSD's moves one pass further; ``placements`` and ``pool`` are updated in place.

    Terminal moves are kept for ``policy.cooldown_seconds`` after they started (the cooldown counts from
    them), then dropped.
    """
    policy = policy or RebalancePolicy()
    outcome = MovesOutcome(moves=[])
    for move in moves:
        state = move.state
        if state in TERMINAL_STATES:
            if _seconds_since(move.started_at, now) <= policy.cooldown_seconds:
                outcome.moves.append(move)
            continue
        new_copy = placements.get(move.new_replica)
        old = placements.get(move.replica)
        if new_copy is None and state != MoveState.PLANNED:
            state, why = MoveState.ROLLED_BACK, "its destination was lost (node gone or NotReady)"
            outcome.events.append(MoveEvent("Warning", "MoveRolledBack", f"replica {move.replica} stays: {why}"))
            outcome.moves.append(move.model_copy(update={"state": state, "reason": why}))
            continue
        facts = MoveFacts(
            destination_reserved=new_copy is not None,
            new_replica_created=new_copy is not None,
            new_replica_ready=new_copy is not None and is_ready(new_copy, pods_by_replica.get(move.new_replica, [])),
            old_replica_removed=old is None,
            old_replica_gone=old is None and not _live_pods(pods_by_replica.get(move.replica, [])),
            seconds_since_start=_seconds_since(move.started_at, now),
        )
        step = next_move_step(state, facts, policy)
        if step.action == MoveAction.REMOVE_OLD_REPLICA and old is not None:
            pool.release(deployment, move.replica)
            del placements[move.replica]
            step = next_move_step(step.state, facts.model_copy(update={"old_replica_removed": True}), policy)
            source, to = (", ".join(n.name for n in nodes) for nodes in (move.from_nodes, move.to_nodes))
            message = (f"replica {move.replica} moved from {source} to replica {move.new_replica} on {to} to make "
                       f"room for {move.for_replica}; the new copy is Ready")  # fmt: skip
            outcome.events.append(MoveEvent("Normal", "Moved", message, sum(n.devices for n in move.from_nodes)))
        elif step.action == MoveAction.ROLL_BACK and new_copy is not None:
            pool.release(deployment, move.new_replica)
            del placements[move.new_replica]
            outcome.events.append(
                MoveEvent("Warning", "MoveRolledBack", f"replica {move.replica} stays: {step.reason}")
            )
        updated = move.model_copy(update={"state": step.state})
        outcome.moves.append(updated)
        if updated.state in IN_FLIGHT_STATES:
            outcome.in_flight_copies.add(move.new_replica)
    return outcome


# ----------------------------------------------------------------------------------- starting plans


@dataclass
class RefusedReplica:
    """A replica the pass could not place: its DSD key, its request and its DSD's placed replicas."""

    deployment: str
    request: ReplicaRequest
    peers: list[ReplicaPlacement] = field(default_factory=list)


@dataclass
class StartedPlan:
    """A plan the pass found: what to tell the waiting DSD, and (mode ``on``) what to write on the others."""

    deployment: str
    replica: int
    reason: str
    plan: RebalancePlan | None
    started: bool
    writes: dict[str, tuple[list[ReplicaPlacement], list[ReplicaMove]]] = field(default_factory=dict)


def residents_of(
    bodies: Sequence[Mapping[str, Any]],
    disruptions_allowed: Mapping[str, int | None],
    now: datetime,
) -> list[ResidentDeployment]:
    """Every valid DSD as a rebalancing resident: spec, placements, PDB budget, moves in flight, last move."""
    residents = []
    for body in bodies:
        metadata = body.get("metadata", {})
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        try:
            spec = DeepSeekDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            continue
        moves = moves_from_status(body.get("status"))
        started = [_seconds_since(m.started_at, now) for m in moves if m.started_at]
        residents.append(
            ResidentDeployment(
                deployment=key,
                spec=spec,
                placements=placements_from_status(body.get("status")),
                disruptions_allowed=disruptions_allowed.get(key),
                moves_in_flight=sum(1 for m in moves if m.state in IN_FLIGHT_STATES),
                # the rebalancer's clock is "now = 0": a move that started s seconds ago started at -s
                last_move_at=-min(started) if started else None,
            )
        )
    return residents


def waiting_on(bodies: Sequence[Mapping[str, Any]]) -> dict[str, list[ReplicaMove]]:
    """Moves in flight per waiting replica (``namespace/name#index``), over every DSD."""
    waiting: dict[str, list[ReplicaMove]] = {}
    for body in bodies:
        for move in moves_from_status(body.get("status")):
            if move.state in IN_FLIGHT_STATES:
                waiting.setdefault(move.for_replica, []).append(move)
    return waiting


def start_plans(
    pool: Pool,
    refused: Sequence[RefusedReplica],
    bodies: Sequence[Mapping[str, Any]],
    catalog: Catalog,
    mode: RebalanceMode,
    now: datetime,
    *,
    disruptions_allowed: Mapping[str, int | None] | None = None,
    policy: RebalancePolicy | None = None,
    demand: DemandMix | None = None,
    engine_image: str | None = None,
) -> list[StartedPlan]:
    """Plans for the refused replicas (one per replica, none for a replica whose moves are in flight).

    ``bodies`` are the DSDs as this pass left them (statuses included). In mode ``on`` every plan's
    destinations are booked in ``pool`` before the next plan is sought, so plans never compete for devices.
    """
    if mode == RebalanceMode.OFF:
        return []
    policy = policy or RebalancePolicy()
    in_flight_for = waiting_on(bodies)
    in_flight = sum(len(moves) for moves in in_flight_for.values())
    residents = residents_of(bodies, disruptions_allowed or {}, now)
    results: list[StartedPlan] = []
    for item in refused:
        label = f"{item.deployment}#{item.request.replica}"
        if label in in_flight_for:
            continue  # its moves are under way; it is placed when they are done
        outcome = plan_rebalance(
            pool, item.request, residents, catalog, policy, now=0.0, in_flight=in_flight, demand=demand,
            peers=item.peers, engine_image=engine_image,
        )  # fmt: skip
        plan = outcome.plan
        if plan is None or mode == RebalanceMode.DRY_RUN:
            results.append(StartedPlan(item.deployment, item.request.replica, outcome.reason, plan, started=False))
            continue
        try:
            book_destinations(pool, plan)
        except (InsufficientDevicesError, ValueError) as exc:
            results.append(StartedPlan(item.deployment, item.request.replica, f"{outcome.reason} (not started: {exc})",
                                       plan, started=False))  # fmt: skip
            continue
        started_at = now.isoformat().replace("+00:00", "Z")
        writes: dict[str, tuple[list[ReplicaPlacement], list[ReplicaMove]]] = {}
        for move in plan.moves:
            placements, records = writes.setdefault(move.deployment, ([], []))
            placements.append(move.destination)
            records.append(move.record(plan.for_replica, MoveState.DESTINATION_RESERVED, started_at))
        in_flight += len(plan.moves)
        for resident in residents:  # they now have a move in flight: no second plan takes them this pass
            if resident.deployment in writes:
                resident.moves_in_flight += len(writes[resident.deployment][1])
                resident.last_move_at = 0.0
        results.append(StartedPlan(item.deployment, item.request.replica, plan.reason, plan, True, writes))
    return results


def status_with_moves(
    status: Mapping[str, Any], placements: Sequence[ReplicaPlacement], records: Sequence[ReplicaMove]
) -> dict[str, Any]:
    """A DSD's stored status with new copies added to ``placements`` and their records to ``moves``."""
    updated = dict(status)
    updated["placements"] = [*(status.get("placements") or []), *(p.wire() for p in placements)]
    updated["moves"] = [*(status.get("moves") or []), *(r.wire() for r in records)]
    return updated


def replica_of(pod: Mapping[str, Any]) -> int | None:
    """The replica index a dspool pod belongs to."""
    value = (pod.get("metadata", {}).get("labels") or {}).get(REPLICA_LABEL)
    return int(value) if value is not None and str(value).isdigit() else None


def refused_replica(body: Mapping[str, Any], catalog: Catalog, site_vllm_image: str | None) -> RefusedReplica | None:
    """The next replica a DSD is waiting for (its last pass refused it), or None."""
    status = body.get("status") or {}
    if status.get("phase") not in ("Unschedulable", "Degraded"):
        return None
    try:
        spec = DeepSeekDeploymentSpec.model_validate(body.get("spec") or {})
        catalog.model(spec.model)
    except (ValidationError, ValueError):
        return None
    metadata = body.get("metadata", {})
    placements = placements_from_status(status)
    copies = {m.new_replica for m in moves_from_status(status) if m.state in IN_FLIGHT_STATES}
    serving = [p for p in placements if p.replica not in copies]
    desired, _ = spec.bounded_replicas()
    if len(serving) >= desired:
        return None
    taken = {p.replica for p in placements}
    index = next(i for i in range(len(taken) + 1) if i not in taken)
    namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
    request = ReplicaRequest.from_spec(namespace, name, index, spec, catalog, site_vllm_image)
    return RefusedReplica(f"{namespace}/{name}", request, serving)


def selector_selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions) against labels; an empty selector selects all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def pdb_budgets(
    pdbs: Sequence[Mapping[str, Any]], pods_by_deployment: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]
) -> dict[str, int | None]:
    """Per DSD (``namespace/label value``): the disruptions its PodDisruptionBudgets allow (the smallest over
    the PDBs selecting any of its pods); DSDs no PDB selects are left out (no limit)."""
    budgets: dict[str, int | None] = {}
    for (namespace, deployment), pods in pods_by_deployment.items():
        for pdb in pdbs:
            if pdb.get("namespace") != namespace:
                continue
            selector = pdb.get("selector") or {}
            if any(selector_selects(selector, p.get("metadata", {}).get("labels") or {}) for p in pods):
                allowed = int(pdb.get("disruptionsAllowed") or 0)
                key = f"{namespace}/{deployment}"
                current = budgets.get(key)
                budgets[key] = allowed if current is None else min(current, allowed)
    return budgets
