"""Rebalancing inside a reconcile pass: start plans for refused replicas, and drive moves in flight. Pure.

:mod:`~dspool.rebalance.planner` plans moves, :mod:`~dspool.rebalance.executor` executes them; this module is
what only the operator does around them: read and write ``status.moves``, observe pods, PDB budgets.

- :func:`rebalance_for_pass` (once per pass, before any DSD is reconciled): the ``Rebalancing`` notes for
  waiting DSDs, and, through :func:`start_plans`, plans for the replicas the last passes refused.
- :func:`start_plans`: for each refused replica, ask :func:`~dspool.rebalance.planner.plan_rebalance` for
  moves of other DSDs. ``dry-run`` only reports the plan; ``on`` starts it
  (:func:`~dspool.rebalance.executor.start_plan`: every destination booked in the pool, all or none) and
  returns, per moved DSD, the destination placements and ``status.moves`` records to write *before* any
  workload exists, as for every placement.
- :func:`advance_moves` (inside :func:`dspool.reconcile.reconcile` of a DSD with moves): observes each move
  (new copy Ready? old replica's pods gone?) and hands it to
  :func:`~dspool.rebalance.executor.advance_move`.

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
    DeepSeekDeploymentSpec,
    ReplicaMove,
    ReplicaPlacement,
    placements_from_status,
)
from dspool.catalog import Catalog, Precision
from dspool.inventory import TERMINAL_PHASES, Pool
from dspool.placement import DemandMix, ReplicaRequest
from dspool.rebalance.executor import (
    MoveEvent,
    MoveObservation,
    PlanNotStarted,
    advance_move,
    plan_ready_timeout,
    start_plan,
)
from dspool.rebalance.planner import PlannedMove, RebalancePlan, RebalancePolicy, ResidentDeployment, plan_rebalance
from dspool.rebalance.state import IN_FLIGHT_STATES, TERMINAL_STATES
from dspool.selectors import selector_selects
from dspool.weights.entries import CacheEntry, entry_for, request_entry
from dspool.weights.estimate import Bandwidth
from dspool.weights.state import CacheView

# Per moved DSD (``namespace/name``): the new copies to add to its placements and their ``status.moves`` records.
MoveWrites = dict[str, tuple[list[ReplicaPlacement], list[ReplicaMove]]]


class RebalanceMode(StrEnum):
    """``dspool run --rebalance``: the pool-wide consent."""

    OFF = "off"
    DRY_RUN = "dry-run"  # plan and say what would move; move nothing
    ON = "on"


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
        if move.state in TERMINAL_STATES:
            if _seconds_since(move.started_at, now) <= policy.cooldown_seconds:
                outcome.moves.append(move)
            continue
        new_copy = placements.get(move.new_replica)
        seen = MoveObservation(
            new_copy_ready=new_copy is not None and is_ready(new_copy, pods_by_replica.get(move.new_replica, [])),
            old_pods_gone=not _live_pods(pods_by_replica.get(move.replica, [])),
            seconds_since_start=_seconds_since(move.started_at, now),
        )
        advanced = advance_move(deployment, move, placements, pool, seen, policy)
        outcome.moves.append(advanced.move)
        if advanced.event is not None:
            outcome.events.append(advanced.event)
        if advanced.move.state in IN_FLIGHT_STATES:
            outcome.in_flight_copies.add(move.new_replica)
    return outcome


# ----------------------------------------------------------------------------------- starting plans


@dataclass
class RefusedReplica:
    """A replica the pass could not place: its DSD key, its request and its DSD's placed replicas."""

    deployment: str
    request: ReplicaRequest
    peers: list[ReplicaPlacement] = field(default_factory=list)
    spec: DeepSeekDeploymentSpec | None = None  # its DSD's (where its weights come from)


@dataclass
class StartedPlan:
    """A plan the pass found: what to tell the waiting DSD, and (mode ``on``) what to write on the others."""

    deployment: str
    replica: int
    reason: str
    plan: RebalancePlan | None
    started: bool
    writes: MoveWrites = field(default_factory=dict)


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
    cache: CacheView | None = None,
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
        request = item.request
        if cache is not None and item.spec is not None:
            request = request.model_copy(update={"cache_entry": request_entry(item.spec, request.model)})
        outcome = plan_rebalance(
            pool, request, residents, catalog, policy, now=0.0, in_flight=in_flight, demand=demand,
            peers=item.peers, engine_image=engine_image, cache=cache,
        )  # fmt: skip
        plan = outcome.plan
        if plan is None or mode == RebalanceMode.DRY_RUN:
            results.append(StartedPlan(item.deployment, item.request.replica, outcome.reason, plan, started=False))
            continue
        timeout = _ready_timeout(plan, residents, catalog, cache, policy) if cache is not None else None
        try:
            started = start_plan(pool, plan, now.isoformat().replace("+00:00", "Z"), timeout)
        except PlanNotStarted as exc:
            results.append(StartedPlan(item.deployment, item.request.replica, f"{outcome.reason} (not started: {exc})",
                                       plan, started=False))  # fmt: skip
            continue
        writes: MoveWrites = {}
        for move in started:
            placements, records = writes.setdefault(move.deployment, ([], []))
            placements.append(move.destination)
            records.append(move.record)
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


def _ready_timeout(
    plan: RebalancePlan,
    residents: Sequence[ResidentDeployment],
    catalog: Catalog,
    cache: CacheView,
    policy: RebalancePolicy,
) -> float | None:
    """With a node model cache: the plan's new copies get the executor's timeout for copies whose weights are
    fetched first (None when that is the policy's own: nothing to fetch)."""
    specs = {resident.deployment: resident.spec for resident in residents}

    def entry_of(move: PlannedMove) -> CacheEntry | None:
        spec = specs.get(move.deployment)
        if spec is None:
            return None
        return entry_for(spec, catalog.model(spec.model), Precision(move.destination.precision))

    timeout = plan_ready_timeout(plan, entry_of, cache, Bandwidth(), policy)
    return timeout if timeout > policy.ready_timeout_seconds else None


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
    return RefusedReplica(f"{namespace}/{name}", request, serving, spec)


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


# ------------------------------------------------------------------------------------------- one pass


@dataclass
class PassRebalance:
    """What a pass's rebalancing decided, before any DSD is reconciled (per DSD ``namespace/name``)."""

    notes: dict[str, str] = field(default_factory=dict)  # the Rebalancing condition of waiting DSDs
    writes: MoveWrites = field(default_factory=dict)  # new copies and their records (mode ``on``; booked)
    events: dict[str, list[MoveEvent]] = field(default_factory=dict)
    plans: list[StartedPlan] = field(default_factory=list)  # every plan found (the metrics count them)


def waiting_notes(bodies: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per DSD whose waiting replica has moves in flight: which moves it waits for."""
    notes: dict[str, str] = {}
    for replica, moves in waiting_on(bodies).items():
        key = replica.rsplit("#", 1)[0]
        listed = "; ".join(f"replica {m.replica} to {', '.join(n.name for n in m.to_nodes)} ({m.state.value})"
                           for m in moves)  # fmt: skip
        notes[key] = f"waiting for {len(moves)} move{'s' if len(moves) != 1 else ''} in flight: {listed}"
    return notes


def _tell_started(found: StartedPlan, plan: RebalancePlan, result: PassRebalance) -> None:
    """A started plan: the note and event on the waiting DSD, the new copies and a Moving event per move."""
    result.notes[found.deployment] = f"moving {len(plan.moves)} replica(s): {found.reason}"
    result.events.setdefault(found.deployment, []).append(MoveEvent("Normal", "Rebalancing", found.reason))
    for key, (placements, records) in found.writes.items():
        previous = result.writes.get(key, ([], []))
        result.writes[key] = (previous[0] + placements, previous[1] + records)
        for record in records:
            to = ", ".join(n.name for n in record.to_nodes)
            message = (f"replica {record.replica} moves make-before-break to {to} (new replica "
                       f"{record.new_replica}) to make room for {record.for_replica}")  # fmt: skip
            result.events.setdefault(key, []).append(MoveEvent("Normal", "Moving", message))


def rebalance_for_pass(
    pool: Pool,
    bodies: Sequence[Mapping[str, Any]],
    pods_by_deployment: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
    pdbs: Sequence[Mapping[str, Any]],
    now: datetime,
    catalog: Catalog,
    mode: RebalanceMode,
    *,
    manages: Callable[[str], bool] = lambda _: True,
    policy: RebalancePolicy | None = None,
    demand: DemandMix | None = None,
    engine_image: str | None = None,
    cache: CacheView | None = None,
) -> PassRebalance:
    """A pass's rebalancing, before any DSD is reconciled: notes for waiting DSDs (the Rebalancing
    condition), new copies to add to moved DSDs (mode ``on``; booked in ``pool``), and events.

    ``bodies``: every DSD as the pass sees it, oldest first; ``manages(namespace)``: whether this operator
    decides the DSDs of a namespace (only its own refused replicas get plans)."""
    result = PassRebalance(notes=waiting_notes(bodies))
    if mode == RebalanceMode.OFF:
        return result
    refused = []
    for body in bodies:
        metadata = body["metadata"]
        if not manages(metadata["namespace"]) or metadata.get("deletionTimestamp"):
            continue
        item = refused_replica(body, catalog, engine_image)
        if item is not None:
            refused.append(item)
    if not refused:
        return result
    result.plans = start_plans(
        pool, refused, bodies, catalog, mode, now, disruptions_allowed=pdb_budgets(pdbs, pods_by_deployment),
        policy=policy, demand=demand, engine_image=engine_image, cache=cache,
    )  # fmt: skip
    for found in result.plans:
        if found.started and found.plan is not None:
            _tell_started(found, found.plan, result)
        elif found.plan is not None:
            result.notes.setdefault(found.deployment, f"dry run: would move {len(found.plan.moves)} replica(s): "
                                                       f"{found.reason} (dspool run --rebalance on)")  # fmt: skip
        else:
            result.notes.setdefault(found.deployment, found.reason)
    return result
