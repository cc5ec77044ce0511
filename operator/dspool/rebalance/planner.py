"""Rebalancing: plan make-before-break moves that make room for a replica that cannot be placed. Pure.

A replica W of DeepSeekDeployment A is refused (no node or gang has room), yet it would fit if a few
replicas of *other* DSDs sat elsewhere. :func:`plan_rebalance` finds such a plan or says why there is none.
Nothing here talks to the Kubernetes API or keeps state between calls: everything comes in as plain data.

Planning rules (``plan_rebalance``):

- **Consent.** Never a replica of the waiting DSD; never one of a DSD with
  ``spec.placement.rebalance: Never``; never one of a DSD that already has a move in flight or moved less
  than ``cooldown_seconds`` ago; at most ``disruptionsAllowed`` replicas of a DSD whose PodDisruptionBudget
  selects its pods (``ResidentDeployment.disruptions_allowed``; ``None`` = no PDB).
- **All or nothing.** Every moved replica gets a destination in the same plan, and the waiting replica's
  placement is part of it. Destinations are booked *while the old replicas still hold their devices*
  (make-before-break), so a destination never uses devices another move frees: the plan is valid at every
  instant of its execution, whatever order the moves finish in.
- **Cheapest first.** Candidate sets of at most ``max_moves`` replicas (and at most ``max_in_flight`` minus
  the moves already in flight) are ranked by devices disrupted, then number of moves, then the waiting
  replica's type preference, then node names; the first set whose replicas all find a home wins.
  Destinations and the waiting replica's placement come from :func:`dspool.placement.place_replica` (the
  same rules as any placement, with the demand mix), so a moved replica may change accelerator type and
  layout, as its own spec allows; it never lands on a node it leaves.
- **Deterministic**: same inputs, same plan.

Starting a plan and driving its moves is :mod:`dspool.rebalance.executor`'s part; the moves' state machine
is :mod:`dspool.rebalance.state`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from pydantic import BaseModel, Field

from dspool.api import (
    DeepSeekDeploymentSpec,
    MoveState,
    NodeDevices,
    RebalanceConsent,
    ReplicaMove,
    ReplicaPlacement,
)
from dspool.catalog import Catalog, UnknownIdError
from dspool.inventory import NO_FABRIC, NodeState, Pool
from dspool.placement import (
    Decision,
    DemandMix,
    ReplicaRequest,
    TypeCandidate,
    feasible_types,
    place_replica,
)
from dspool.weights.entries import request_entry
from dspool.weights.estimate import Bandwidth
from dspool.weights.state import CacheView

# Beyond this many movable replicas on one node, subsets are not enumerated: the largest ones are taken.
MAX_ENUMERATED_PER_NODE = 12
MAX_MOVES_LIMIT = 16


class RebalancePolicy(BaseModel):
    """Limits of the rebalancer; the defaults are what ``dspool run --rebalance`` and ``simulate`` use."""

    max_moves: int = Field(default=4, ge=1, le=MAX_MOVES_LIMIT, description="replicas one plan may move")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="moves in flight pool-wide")
    cooldown_seconds: float = Field(default=300.0, ge=0, description="per DSD, after one of its moves started")
    ready_timeout_seconds: float = Field(default=900.0, gt=0, description="a new copy not Ready by then rolls back")
    max_candidates: int = Field(default=48, ge=1, description="candidate sets tried before giving up")


class ResidentDeployment(BaseModel):
    """A DSD whose replicas might be moved: its spec, its placements, and what limits moving them."""

    deployment: str = Field(description="namespace/name")
    spec: DeepSeekDeploymentSpec
    placements: list[ReplicaPlacement] = Field(default_factory=list, description="status.placements")
    disruptions_allowed: int | None = Field(
        default=None, ge=0, description="status.disruptionsAllowed of a PDB selecting its pods; None = no PDB"
    )
    moves_in_flight: int = Field(default=0, ge=0)
    last_move_at: float | None = Field(default=None, description="when its last move started (same clock as now)")

    @property
    def consent(self) -> RebalanceConsent:
        """spec.placement.rebalance"""
        return self.spec.placement.rebalance


class PlannedMove(BaseModel):
    """One replica of another DSD moving to make room: where it is and where it goes."""

    deployment: str = Field(description="namespace/name")
    model: str
    source: ReplicaPlacement
    destination: ReplicaPlacement = Field(description="the new copy, under a fresh replica index")
    reason: str = Field(description="why the destination (the placement engine's sentence)")

    @property
    def replica(self) -> int:
        """Index of the replica that moves."""
        return self.source.replica

    @property
    def accelerator(self) -> str:
        """Accelerator of the destination."""
        return self.destination.accelerator

    @property
    def from_nodes(self) -> list[NodeDevices]:
        """Nodes and devices the replica leaves."""
        return self.source.nodes

    @property
    def to_nodes(self) -> list[NodeDevices]:
        """Nodes and devices of the new copy."""
        return self.destination.nodes

    @property
    def devices(self) -> int:
        """Devices disrupted: what the moving replica holds."""
        return self.source.devices

    def record(
        self, for_replica: str, state: MoveState = MoveState.PLANNED, started_at: str | None = None
    ) -> ReplicaMove:
        """The ``status.moves`` entry of this move on its DSD."""
        return ReplicaMove(
            replica=self.source.replica,
            new_replica=self.destination.replica,
            accelerator=self.destination.accelerator,
            from_nodes=self.source.nodes,
            to_nodes=self.destination.nodes,
            state=state,
            for_replica=for_replica,
            started_at=started_at,
            reason=self.reason,
        )


class RebalancePlan(BaseModel):
    """Moves that make room for one waiting replica, and where that replica then goes."""

    deployment: str = Field(description="namespace/name of the waiting DSD")
    replica: int
    model: str
    waiting: ReplicaPlacement = Field(description="where the waiting replica goes once every move is Done")
    moves: list[PlannedMove]
    devices_freed: int = Field(description="devices the moved replicas give back (= devices disrupted)")
    reason: str

    @property
    def for_replica(self) -> str:
        """``namespace/name#index`` of the waiting replica (``ReplicaMove.for_replica``)."""
        return f"{self.deployment}#{self.replica}"


class RebalanceOutcome(BaseModel):
    """A plan, or None with the reason there is none."""

    plan: RebalancePlan | None
    reason: str


# ------------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class _Movable:
    """A replica the plan may move."""

    resident: int  # index into the residents list
    deployment: str
    placement: ReplicaPlacement
    on_node: dict[str, int]  # node -> devices it holds there

    @property
    def devices(self) -> int:
        return self.placement.devices

    @property
    def key(self) -> tuple[str, int]:
        return (self.deployment, self.placement.replica)


@dataclass(frozen=True)
class _Candidate:
    """A set of replicas whose removal makes room for the waiting replica on some nodes of one type."""

    devices: int
    moves: int
    type_rank: int
    nodes: tuple[str, ...]
    victims: tuple[_Movable, ...]

    @property
    def order(self) -> tuple[int, int, int, tuple[str, ...]]:
        return (self.devices, self.moves, self.type_rank, self.nodes)


def _short(deployment: str) -> str:
    return deployment.split("/", 1)[-1]


def _nodes_text(nodes: Iterable[NodeDevices]) -> str:
    return "+".join(n.name for n in nodes)


def _where(placement: ReplicaPlacement, pool: Pool) -> str:
    """'2 x 8 H100-80G in rack-a' for a gang, '8 x H200-141G on h200-1' for one node."""
    if len(placement.nodes) > 1:
        fabric = pool.nodes[placement.nodes[0].name].fabric_domain if placement.nodes[0].name in pool.nodes else ""
        inside = f" in {fabric}" if fabric and fabric != NO_FABRIC else ""
        return f"{len(placement.nodes)} x {placement.nodes[0].devices} {placement.accelerator}{inside}"
    return f"{placement.devices} x {placement.accelerator} on {placement.nodes[0].name}"


def _movables(
    residents: Sequence[ResidentDeployment], waiting: str, now: float, policy: RebalancePolicy
) -> tuple[list[_Movable], dict[str, int]]:
    """Replicas that may move, and how many were held back per reason."""
    movable: list[_Movable] = []
    held: dict[str, int] = {}

    def hold(why: str, count: int) -> None:
        if count:
            held[why] = held.get(why, 0) + count

    for position, resident in enumerate(residents):
        if resident.deployment == waiting:
            continue
        count = len(resident.placements)
        if resident.consent == RebalanceConsent.NEVER:
            hold("of DSDs with rebalance: Never", count)
        elif resident.disruptions_allowed == 0:
            hold("whose PodDisruptionBudget allows no disruption", count)
        elif resident.moves_in_flight:
            hold("of DSDs with a move in flight", count)
        elif resident.last_move_at is not None and now - resident.last_move_at < policy.cooldown_seconds:
            hold(f"of DSDs moved less than {policy.cooldown_seconds:.0f}s ago", count)
        else:
            for placement in resident.placements:
                on_node: dict[str, int] = {}
                for node in placement.nodes:
                    on_node[node.name] = on_node.get(node.name, 0) + node.devices
                movable.append(_Movable(position, resident.deployment, placement, on_node))
    return movable, held


def _within_budgets(victims: Iterable[_Movable], residents: Sequence[ResidentDeployment]) -> bool:
    """No DSD loses more replicas at once than its PodDisruptionBudget allows."""
    per_resident: dict[int, int] = {}
    for victim in victims:
        per_resident[victim.resident] = per_resident.get(victim.resident, 0) + 1
    for position, count in per_resident.items():
        allowed = residents[position].disruptions_allowed
        if allowed is not None and count > allowed:
            return False
    return True


def _cheapest_subset(
    on_node: Sequence[_Movable], node: str, deficit: int, budget: int, residents: Sequence[ResidentDeployment]
) -> tuple[_Movable, ...] | None:
    """The fewest devices disrupted (then fewest moves) among sets of at most ``budget`` replicas on ``node``
    that free at least ``deficit`` devices there."""
    ordered = sorted(on_node, key=lambda m: (-m.on_node[node], m.devices, m.key))
    if len(ordered) > MAX_ENUMERATED_PER_NODE:
        ordered = ordered[:MAX_ENUMERATED_PER_NODE]  # the largest holders; enough to find a cheap set
    best: tuple[_Movable, ...] | None = None
    best_key: tuple[int, int, tuple[tuple[str, int], ...]] | None = None
    for size in range(1, min(budget, len(ordered)) + 1):
        for subset in combinations(ordered, size):
            if sum(m.on_node[node] for m in subset) < deficit or not _within_budgets(subset, residents):
                continue
            key = (sum(m.devices for m in subset), size, tuple(sorted(m.key for m in subset)))
            if best_key is None or key < best_key:
                best, best_key = subset, key
    return best


def _candidates(
    types: Sequence[TypeCandidate],
    movable: Sequence[_Movable],
    budget: int,
    residents: Sequence[ResidentDeployment],
) -> list[_Candidate]:
    """Every victim set (per node or per gang of nodes) that would free enough devices, cheapest first."""
    by_node: dict[str, list[_Movable]] = {}
    for item in movable:
        for name in item.on_node:
            by_node.setdefault(name, []).append(item)
    found: dict[frozenset[tuple[str, int]], _Candidate] = {}

    def node_option(node: NodeState, need: int) -> tuple[_Movable, ...] | None:
        free = node.allocatable - node.used - node.reserved
        if free >= need:
            return ()
        if node.allocatable - node.used < need:  # foreign pods alone leave too little
            return None
        return _cheapest_subset(by_node.get(node.name, []), node.name, need - max(free, 0), budget, residents)

    def add(rank: int, nodes: Sequence[str], victims: Iterable[_Movable]) -> None:
        unique = {v.key: v for v in victims}
        if not unique or len(unique) > budget or not _within_budgets(unique.values(), residents):
            return
        chosen = tuple(sorted(unique.values(), key=lambda v: v.key))
        candidate = _Candidate(sum(v.devices for v in chosen), len(chosen), rank, tuple(sorted(nodes)), chosen)
        known = found.get(frozenset(unique))
        if known is None or candidate.order < known.order:
            found[frozenset(unique)] = candidate

    for rank, option in enumerate(types):
        stages, per_stage = option.plan.nodes_per_replica, option.plan.devices_per_node
        if stages == 1:
            for node in option.nodes:
                victims = node_option(node, per_stage)
                if victims:
                    add(rank, [node.name], victims)
            continue
        for _, nodes in option.domains:
            options = []
            for node in nodes:
                victims = node_option(node, per_stage)
                if victims is not None:
                    options.append((sum(v.devices for v in victims), len(victims), node.name, victims))
            if len(options) < stages:
                continue
            options.sort(key=lambda o: (o[0], o[1], o[2]))
            picked = options[:stages]
            add(rank, [o[2] for o in picked], [v for o in picked for v in o[3]])
    return sorted(found.values(), key=lambda c: (c.order, [v.key for v in c.victims]))


def _fresh_index(taken: set[int]) -> int:
    return next(i for i in range(len(taken) + 1) if i not in taken)


@dataclass(frozen=True)
class _Placing:
    """What every placement the planner asks for shares: the catalog, the demand mix, the site's vLLM image,
    and the node model caches (with them, destinations prefer nodes that hold their weights)."""

    catalog: Catalog
    demand: DemandMix | None
    engine_image: str | None
    cache: CacheView | None = None

    def place(self, pool: Pool, request: ReplicaRequest, peers: Sequence[ReplicaPlacement]) -> Decision:
        """``place_replica`` with these inputs."""
        if self.cache is None:
            return place_replica(pool, request, self.catalog, peers, self.demand)
        return place_replica(pool, request, self.catalog, peers, self.demand, self.cache, Bandwidth())


def _victims_make_room(
    pool: Pool,
    waiting: ReplicaRequest,
    candidate: _Candidate,
    placing: _Placing,
    peers: Sequence[ReplicaPlacement],
) -> ReplicaPlacement | None:
    """Inside a trial: where the waiting replica goes once the victims left (booked), or None.

    The victims' devices are then held again: the old copies keep them until their new copies are Ready,
    so no destination may use them."""
    for victim in candidate.victims:
        pool.release(victim.deployment, victim.placement.replica)
    decision = placing.place(pool, waiting, peers)
    if decision.placement is None:
        return None
    pool.reserve(waiting.deployment, decision.placement)
    for victim in candidate.victims:
        pool.hold(victim.on_node)
    return decision.placement


def _home_for(
    pool: Pool, victim: _Movable, resident: ResidentDeployment, index: int, placing: _Placing
) -> PlannedMove | str:
    """Inside a trial: the victim's new copy (under replica ``index``, booked), or why it has no home."""
    namespace, _, name = resident.deployment.partition("/")
    try:
        request = ReplicaRequest.from_spec(namespace, name, index, resident.spec, placing.catalog, placing.engine_image)
    except UnknownIdError as exc:
        return f"{_short(victim.deployment)}#{victim.placement.replica}: {exc}"
    update: dict[str, Any] = {"avoid_nodes": sorted(victim.on_node)}
    if placing.cache is not None:
        update["cache_entry"] = request_entry(resident.spec, request.model)
    request = request.model_copy(update=update)
    others = [p for p in resident.placements if p.replica != victim.placement.replica]
    moved = placing.place(pool, request, others)
    if moved.placement is None:
        return f"{_short(victim.deployment)}#{victim.placement.replica} has no home: {moved.reason}"
    destination = moved.placement.model_copy(update={"spec_hash": victim.placement.spec_hash})
    pool.reserve(victim.deployment, destination)
    return PlannedMove(
        deployment=victim.deployment,
        model=resident.spec.model,
        source=victim.placement,
        destination=destination,
        reason=moved.reason,
    )


def _homes_for_victims(
    pool: Pool,
    waiting: ReplicaRequest,
    candidate: _Candidate,
    residents: Sequence[ResidentDeployment],
    placing: _Placing,
) -> list[PlannedMove] | str:
    """Inside a trial: a new copy for every victim, largest first, or why one has none.

    Each new copy takes the lowest replica index its DSD does not use (nor the waiting replica, when the
    waiting DSD is the same, nor another new copy of this plan)."""
    moves: list[PlannedMove] = []
    new_indexes: dict[int, set[int]] = {}
    for victim in sorted(candidate.victims, key=lambda v: (-v.devices, v.key)):
        resident = residents[victim.resident]
        taken = new_indexes.setdefault(victim.resident, {p.replica for p in resident.placements})
        if resident.deployment == waiting.deployment:
            taken.add(waiting.replica)  # the waiting replica of the same DSD holds its index in this plan
        index = _fresh_index(taken)
        home = _home_for(pool, victim, resident, index, placing)
        if isinstance(home, str):
            return home
        taken.add(index)
        moves.append(home)
    return moves


def _plan_of(
    pool: Pool, waiting: ReplicaRequest, placement: ReplicaPlacement, moves: list[PlannedMove]
) -> RebalancePlan:
    """The plan, with the sentence that explains it."""
    moves = sorted(moves, key=lambda m: (m.deployment, m.replica))
    devices = sum(m.devices for m in moves)
    listed = ", ".join(
        f"{_short(m.deployment)}#{m.replica} {_nodes_text(m.from_nodes)} -> {_nodes_text(m.to_nodes)}" for m in moves
    )
    reason = (
        f"to place {_short(waiting.deployment)}#{waiting.replica} ({_where(placement, pool)}): move {listed}; "
        f"{len(moves)} move{'s' if len(moves) != 1 else ''}, {devices} device{'s' if devices != 1 else ''} disrupted"
    )
    return RebalancePlan(
        deployment=waiting.deployment,
        replica=waiting.replica,
        model=waiting.model.id,
        waiting=placement,
        moves=moves,
        devices_freed=devices,
        reason=reason,
    )


def _try_candidate(
    pool: Pool,
    waiting: ReplicaRequest,
    candidate: _Candidate,
    residents: Sequence[ResidentDeployment],
    placing: _Placing,
    peers: Sequence[ReplicaPlacement],
) -> tuple[RebalancePlan | None, str]:
    """Build the plan for one victim set, or say which part has no home. The pool is left as it was."""
    with pool.trial():
        placement = _victims_make_room(pool, waiting, candidate, placing, peers)
        if placement is None:
            return None, "the waiting replica still does not fit"
        moves = _homes_for_victims(pool, waiting, candidate, residents, placing)
        if isinstance(moves, str):
            return None, moves
    return _plan_of(pool, waiting, placement, moves), ""


def plan_rebalance(
    pool: Pool,
    waiting: ReplicaRequest,
    residents: Sequence[ResidentDeployment],
    catalog: Catalog,
    policy: RebalancePolicy | None = None,
    *,
    now: float = 0.0,
    in_flight: int = 0,
    demand: DemandMix | None = None,
    peers: Sequence[ReplicaPlacement] = (),
    engine_image: str | None = None,
    cache: CacheView | None = None,
) -> RebalanceOutcome:
    """A plan that moves at most ``policy.max_moves`` replicas of other DSDs so ``waiting`` fits, or why not.

    ``pool`` holds every current reservation (as for ``place_replica``) and is left unchanged. ``residents``:
    every DSD whose replicas might move (the waiting DSD may be among them; it is never moved). ``now``: the
    clock of ``last_move_at`` (seconds). ``in_flight``: moves in flight pool-wide. ``peers``: the waiting
    DSD's placed replicas. ``engine_image``: the site's default vLLM image (sizing on Ampere depends on it).
    ``cache``: the node model caches; with them, new copies prefer (among equally good places) the nodes that
    hold their weights (the waiting request carries its own ``cache_entry``).
    """
    policy = policy or RebalancePolicy()
    label = f"{_short(waiting.deployment)}#{waiting.replica}"
    budget = min(policy.max_moves, policy.max_in_flight - in_flight)
    if budget <= 0:
        return RebalanceOutcome(
            plan=None,
            reason=f"no rebalancing for {label}: {in_flight} moves in flight (limit {policy.max_in_flight})",
        )
    types = feasible_types(pool, waiting, catalog)
    if not types:
        return RebalanceOutcome(plan=None, reason=f"no rebalancing for {label}: no allowed accelerator type fits it")
    movable, held = _movables(residents, waiting.deployment, now, policy)
    held_note = "; not movable: " + ", ".join(f"{n} replica{'s' if n != 1 else ''} {why}" for why, n in held.items())
    held_note = held_note if held else ""
    candidates = _candidates(types, movable, budget, residents)
    if not candidates:
        needs = "; ".join(
            f"{t.accelerator} needs {t.plan.devices_per_node} free on "
            + (f"{t.plan.nodes_per_replica} nodes of one fabric" if t.plan.nodes_per_replica > 1 else "one node")
            for t in types[:3]
        )
        return RebalanceOutcome(
            plan=None,
            reason=f"no rebalancing for {label}: no set of at most {budget} movable replicas makes room ({needs})"
            + held_note,
        )
    placing = _Placing(catalog, demand, engine_image, cache)
    return _first_plan(pool, waiting, candidates[: policy.max_candidates], residents, placing, peers, held_note)


def _first_plan(
    pool: Pool,
    waiting: ReplicaRequest,
    candidates: Sequence[_Candidate],
    residents: Sequence[ResidentDeployment],
    placing: _Placing,
    peers: Sequence[ReplicaPlacement],
    held_note: str,
) -> RebalanceOutcome:
    """The first candidate set (cheapest first) for which every moved replica has a home, or why none has."""
    homeless = ""
    for candidate in candidates:
        plan, why = _try_candidate(pool, waiting, candidate, residents, placing, peers)
        if plan is not None:
            return RebalanceOutcome(plan=plan, reason=plan.reason)
        homeless = homeless or why
    tried = len(candidates)
    return RebalanceOutcome(
        plan=None,
        reason=f"no rebalancing for {_short(waiting.deployment)}#{waiting.replica}: {tried} candidate "
        f"set{'s' if tried != 1 else ''} tried, none has a home for every moved replica (first: {homeless})"
        + held_note,
    )
