"""``dspool simulate``: the operator's own placement and rebalancing code on a simulated clock.

The pool file becomes the same ``v1.Node`` objects the test clusters get (``sim.fleet.node_manifests``), read
by ``inventory.build_pool``; each arrival of the trace is a DeepSeekDeployment whose replicas are placed
one by one by ``placement.place_replica`` (the demand mix: every model of the trace), exactly as a
reconcile pass would. Departures release everything the DSD holds.

A replica that cannot be placed when its DSD arrives is refused (loss model) unless ``queue`` is set: then
it waits and is tried again, oldest first, whenever devices are released; its waiting time is reported.
With ``rebalance``, a refused replica first asks ``rebalance.plan_rebalance``; a plan is executed by the
operator's own executor (``rebalance.executor``): destinations booked while the old replicas keep theirs
(``start_plan``), each move driven by ``advance_move``; a new copy is Ready ``move_seconds`` after its
destination was booked, then the old copy is removed, and when every move is Done the waiting replica is
placed. A plan whose copies are not Ready within the policy's timeout rolls back. With no move time (the
default) every move of a plan is done at once (``apply_plan_at_once``).

With ``model_cache`` set, weights take time (:mod:`dspool.sim.model_cache`): a replica is Ready once every
node of it holds its entry and has loaded it, a move's new copy likewise (and its ready timeout comes from
the estimate, :mod:`dspool.weights.estimate`), and placement reads the node caches (``cache_aware``).
``warm_nodes`` keeps each entry on that many more nodes than its replicas use, fetched in the background.
Without it (the default) nothing about weights is simulated or reported, as before.

Decision time is the wall time of each replica's decision (placement, plus planning when it was refused).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from dspool.api import DeepSeekDeploymentSpec, MoveState, ReplicaMove, ReplicaPlacement, Strategy
from dspool.catalog import Catalog
from dspool.inventory import Pool, build_pool
from dspool.placement import DemandMix, ReplicaRequest, place_replica
from dspool.rebalance import (
    TERMINAL_STATES,
    MoveObservation,
    PlannedMove,
    PlanNotStarted,
    PlanProgress,
    RebalancePlan,
    RebalancePolicy,
    ResidentDeployment,
    abandon_move,
    advance_move,
    apply_plan_at_once,
    fits_now,
    plan_progress,
    plan_ready_timeout,
    plan_rebalance,
    start_plan,
)
from dspool.sim.fleet import PoolFile, node_manifests
from dspool.sim.inputs import TraceEntry
from dspool.sim.model_cache import ModelCaches
from dspool.weights.entries import GIB, CacheEntry, request_entry
from dspool.weights.estimate import Bandwidth, entry_in_precision
from dspool.weights.state import DEFAULT_MODEL_CACHE_GIB, MODEL_CACHE_CAPACITY_LABEL, CacheView

NAMESPACE = "sim"
EXAMPLES_KEPT = 3

# Events at the same instant: departures free devices before moves complete, and both before arrivals.
_DEPART, _MOVE_CHECK, _ARRIVE = 0, 1, 2


class SimulationSettings(BaseModel):
    """How to run a trace."""

    strategy: Strategy | None = Field(default=None, description="overrides every spec's strategy when set")
    rebalance: bool = False
    policy: RebalancePolicy = Field(default_factory=RebalancePolicy)
    queue: bool = Field(default=False, description="refused replicas wait for room instead of being lost")
    move_seconds: float = Field(default=0.0, ge=0, description="until a moved replica's new copy is Ready")
    model_cache: bool | None = Field(
        default=None,
        description="None: weights not simulated; True: node model caches; False: every replica fetches its own copy",
    )
    bandwidth: Bandwidth = Field(default_factory=Bandwidth)
    warm_nodes: int = Field(default=0, ge=0, description="keep each entry on this many more nodes than it is used on")
    cache_aware: bool = Field(default=True, description="placement reads the node caches (False: cache-blind)")


class Placer(Protocol):
    """How replicas are placed and room is made; the default is dspool's own engine (benchmarks plug others)."""

    def place(self, pool: Pool, request: ReplicaRequest, peers: Sequence[ReplicaPlacement]) -> ReplicaPlacement | None:
        """Where the replica goes, or None; must not change the pool."""
        ...

    def make_room(
        self,
        pool: Pool,
        request: ReplicaRequest,
        residents: Sequence[ResidentDeployment],
        now: float,
        in_flight: int,
        peers: Sequence[ReplicaPlacement],
    ) -> RebalancePlan | None:
        """Moves that let a refused replica fit, or None; must not change the pool."""
        ...


class DspoolPlacer:
    """dspool's placement engine and, when a policy is given, its rebalancer."""

    def __init__(
        self,
        catalog: Catalog,
        demand: DemandMix | None,
        policy: RebalancePolicy | None,
        cache: CacheView | None = None,
        bandwidth: Bandwidth | None = None,
    ) -> None:
        """``cache``: the node model caches placement reads (None: placement ignores weights)."""
        self.catalog = catalog
        self.demand = demand
        self.policy = policy
        self.cache = cache
        self.bandwidth = bandwidth
        self.last_reason = ""  # why the last replica was refused (and why no plan helped)
        self.plans: list[str] = []

    def place(self, pool: Pool, request: ReplicaRequest, peers: Sequence[ReplicaPlacement]) -> ReplicaPlacement | None:
        """``placement.place_replica``."""
        decision = place_replica(pool, request, self.catalog, peers, self.demand, self.cache, self.bandwidth)
        if decision.placement is None:
            self.last_reason = decision.reason
        return decision.placement

    def make_room(
        self,
        pool: Pool,
        request: ReplicaRequest,
        residents: Sequence[ResidentDeployment],
        now: float,
        in_flight: int,
        peers: Sequence[ReplicaPlacement],
    ) -> RebalancePlan | None:
        """``rebalance.plan_rebalance`` (None when rebalancing is off)."""
        if self.policy is None:
            return None
        outcome = plan_rebalance(
            pool,
            request,
            residents,
            self.catalog,
            self.policy,
            now=now,
            in_flight=in_flight,
            demand=self.demand,
            peers=peers,
        )
        if outcome.plan is None:
            self.last_reason += f"; {outcome.reason}"
        elif len(self.plans) < EXAMPLES_KEPT:
            self.plans.append(outcome.reason)
        return outcome.plan


class _Report(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ModelCounts(_Report):
    """Replicas of one model: asked for and placed."""

    requested: int = 0
    placed: int = 0


class Percentiles(_Report):
    """p50 and p99 of a distribution."""

    p50: float = 0.0
    p99: float = 0.0


class Waiting(_Report):
    """Replicas that waited for room (``queue``)."""

    replicas: int = 0
    never_placed: int = 0
    mean_seconds: float = 0.0
    p99_seconds: float = 0.0


class ReadyTimes(_Report):
    """Time-to-ready (placement to Ready: weights fetched and loaded) of the replicas that became Ready."""

    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    replicas: int = Field(default=0, description="replicas that became Ready")
    never_ready: int = Field(default=0, description="replicas that left before their weights were in")

    @classmethod
    def of(cls, seconds: Sequence[float], never_ready: int = 0) -> ReadyTimes:
        """The summary of these times."""
        if not seconds:
            return cls(never_ready=never_ready)
        return cls(
            mean=round(sum(seconds) / len(seconds), 1),
            p50=round(_percentile(seconds, 0.5), 1),
            p95=round(_percentile(seconds, 0.95), 1),
            replicas=len(seconds),
            never_ready=never_ready,
        )


class TimeToReady(ReadyTimes):
    """Time-to-ready over every replica, and per model."""

    per_model: dict[str, ReadyTimes] = Field(default_factory=dict)


WEIGHTS_FIELDS = {"time_to_ready_seconds", "origin_bytes", "cache_hit_ratio"}


class SimulationReport(_Report):
    """What a run measured; ``-o json`` prints it."""

    arrivals: int
    replicas_requested: int
    replicas_placed: int
    acceptance: float = Field(description="replicas placed / requested")
    per_model: dict[str, ModelCounts]
    allocation: float = Field(description="time-averaged share of the pool's devices booked, first to last arrival")
    moves: int = Field(description="replica moves started")
    moves_per_arrival: float
    rebalance_plans: int
    rolled_back: int
    devices_disrupted: int
    decision_seconds: Percentiles
    waiting: Waiting
    pool_nodes: int
    pool_devices: int
    refusal_examples: list[str] = Field(default_factory=list)
    plan_examples: list[str] = Field(default_factory=list)
    time_to_ready_seconds: TimeToReady | None = Field(default=None, description="with the model cache simulated")
    origin_bytes: int | None = Field(default=None, description="bytes fetched from the origin, prefetch included")
    cache_hit_ratio: float | None = Field(
        default=None, description="share of (replica, node) placements whose node held the entry Ready"
    )

    def as_json(self) -> dict[str, object]:
        """The ``-o json`` document (the weights keys only when the model cache was simulated)."""
        exclude = WEIGHTS_FIELDS if self.time_to_ready_seconds is None else None
        return self.model_dump(mode="json", by_alias=True, exclude=exclude)


@dataclass
class _Deployment:
    entry: TraceEntry
    key: str
    spec: DeepSeekDeploymentSpec
    placements: dict[int, ReplicaPlacement] = field(default_factory=dict)
    moves_in_flight: int = 0
    last_move_at: float | None = None
    weights: CacheEntry | None = None  # what its replicas serve from a node cache (None: not simulated, or a PVC)


@dataclass
class _Waiter:
    key: str
    replica: int
    since: float


@dataclass
class _PlanRun:
    plan: RebalancePlan
    started: float
    records: list[ReplicaMove]  # one per plan.moves entry: the move's record as the operator would store it
    waiter: _Waiter
    policy: RebalancePolicy  # the settings' policy; with weights, its ready timeout from the estimate


def _percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def pool_from_file(pool_file: PoolFile, catalog: Catalog) -> Pool:
    """The inventory pool a cluster built from this pool file would give the operator (nothing booked)."""
    nodes = node_manifests(pool_file, catalog)
    for node in nodes:  # what kwok reports for every fake node once it runs
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return build_pool(nodes, [], [], catalog)


def cache_capacities(pool: Pool) -> dict[str, int]:
    """Each node's model cache, bytes: its ``dspool.io/model-cache-gib`` label, else the default."""
    return {
        name: int(float(node.labels.get(MODEL_CACHE_CAPACITY_LABEL, DEFAULT_MODEL_CACHE_GIB)) * GIB)
        for name, node in pool.nodes.items()
    }


def trace_demand(trace: Sequence[TraceEntry], catalog: Catalog) -> DemandMix:
    """The demand mix of a trace: every model it names."""
    return DemandMix.of(catalog.model(entry.spec.model) for entry in trace)


class Simulation:
    """One run of a trace on a pool; :meth:`run` returns the report."""

    def __init__(
        self,
        pool: Pool,
        trace: Sequence[TraceEntry],
        catalog: Catalog,
        settings: SimulationSettings | None = None,
        placer: Placer | None = None,
        observer: Callable[[Simulation, float], None] | None = None,
    ) -> None:
        """``observer`` is called after every event with the simulation and the clock (tests check invariants)."""
        self.observer = observer
        self.pool = pool
        self.trace = trace
        self.catalog = catalog
        self.settings = settings or SimulationSettings()
        cache_on = self.settings.model_cache is not None
        self.weights = (
            ModelCaches(cache_capacities(pool), self.settings.bandwidth, keep=bool(self.settings.model_cache))
            if cache_on
            else None
        )
        seen = self.weights.view if self.weights and self.weights.keep and self.settings.cache_aware else None
        self.placer: Placer = placer or DspoolPlacer(
            catalog,
            trace_demand(trace, catalog),
            self.settings.policy if self.settings.rebalance else None,
            seen,
            self.settings.bandwidth,
        )
        self.live: dict[str, _Deployment] = {}
        self.queue: list[_Waiter] = []
        self.plans: list[_PlanRun] = []
        self.events: list[tuple[float, int, int, str]] = []
        self.sequence = 0
        self.requested: dict[str, int] = {}
        self.placed: dict[str, int] = {}
        self.decisions: list[float] = []
        self.moves = 0
        self.plans_started = 0
        self.rolled_back = 0
        self.devices_disrupted = 0
        self.waits: list[float] = []
        self.refusals: list[str] = []
        self.never_placed = 0
        self.devices = sum(n.allocatable for n in pool.nodes.values())
        self.booked_area = 0.0
        self.clock = 0.0

    # ------------------------------------------------------------------------------------------ helpers

    def _push(self, at: float, kind: int, payload: str) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, kind, self.sequence, payload))

    def _booked(self) -> int:
        return sum(n.allocatable - n.free for n in self.pool.nodes.values())

    def _request(self, deployment: _Deployment, replica: int) -> ReplicaRequest:
        request = ReplicaRequest.from_spec(NAMESPACE, deployment.entry.name, replica, deployment.spec, self.catalog)
        if deployment.weights is not None:
            request.cache_entry = deployment.weights
        return request

    def _residents(self) -> list[ResidentDeployment]:
        return [
            ResidentDeployment(
                deployment=d.key,
                spec=d.spec,
                placements=sorted(d.placements.values(), key=lambda p: p.replica),
                moves_in_flight=d.moves_in_flight,
                last_move_at=d.last_move_at,
            )
            for d in self.live.values()
        ]

    def _in_flight(self) -> int:
        """Moves in flight pool-wide, counted as the operator counts them: a DSD that left took its moves with
        it (the operator reads moves from the statuses of the DSDs still there)."""
        return sum(
            1
            for run in self.plans
            for move, record in zip(run.plan.moves, run.records, strict=True)
            if record.state not in TERMINAL_STATES and move.deployment in self.live
        )

    def _placed(self, deployment: _Deployment, placement: ReplicaPlacement, waited: float | None) -> None:
        self.pool.reserve(deployment.key, placement)
        deployment.placements[placement.replica] = placement
        self.placed[deployment.spec.model] = self.placed.get(deployment.spec.model, 0) + 1
        if waited is not None:
            self.waits.append(waited)
        self._weights_placed(deployment, placement, counted=True)

    # ------------------------------------------------------------------------------------------ weights

    def _placement_entry(self, deployment: _Deployment, placement: ReplicaPlacement) -> CacheEntry | None:
        if deployment.weights is None:
            return None
        return entry_in_precision(deployment.weights, self.catalog.model(deployment.spec.model), placement.precision)

    def _weights_placed(self, deployment: _Deployment, placement: ReplicaPlacement, counted: bool) -> None:
        """A placement starts waiting for its weights; then the entry is prefetched to warm nodes."""
        entry = self._placement_entry(deployment, placement)
        if self.weights is None or entry is None:
            return
        nodes = [n.name for n in placement.nodes]
        self.weights.place(f"{deployment.key}#{placement.replica}", entry, nodes, self.clock, counted)
        if self.settings.warm_nodes and self.weights.keep:
            self._prefetch(entry, placement.accelerator)

    def _weights_released(self, deployment: _Deployment, placement: ReplicaPlacement) -> None:
        entry = self._placement_entry(deployment, placement)
        if self.weights is not None and entry is not None:
            nodes = [n.name for n in placement.nodes]
            self.weights.release(f"{deployment.key}#{placement.replica}", entry, nodes, self.clock)

    def _released_since(self, deployment: _Deployment, before: dict[int, ReplicaPlacement]) -> None:
        """Placements the executor dropped (a source removed, a new copy rolled back) release their weights."""
        for replica, placement in before.items():
            if deployment.placements.get(replica) is not placement:
                self._weights_released(deployment, placement)

    def _prefetch(self, entry: CacheEntry, accelerator: str) -> None:
        """Keep ``entry`` on ``warm_nodes`` more nodes of this type than its replicas use: the nodes with the
        most free devices (where the next replica is likeliest to fit) that have room in their cache."""
        assert self.weights is not None
        used = {node for node, held in self.weights.in_use if held == entry.id}
        holders = {name for name in self.pool.nodes if self.weights.holds(name, entry.id)}
        wanted = self.settings.warm_nodes - len(holders - used)
        candidates = sorted(
            (n for n in self.pool.nodes.values() if n.accelerator == accelerator and n.name not in holders),
            key=lambda n: (-n.free, n.name),
        )
        for node in candidates:
            if wanted <= 0:
                return
            if self.weights.prefetch(entry, node.name, self.clock):
                wanted -= 1

    def _plan_policy(self, plan: RebalancePlan) -> RebalancePolicy:
        """The policy a plan's moves run under: with weights, the executor's rule for a new copy whose weights
        are fetched first (:func:`dspool.rebalance.executor.plan_ready_timeout`), the move time counted too."""
        policy = self.settings.policy
        if self.weights is None:
            return policy
        view = self.weights.view if self.weights.keep else CacheView()

        def entry_of(move: PlannedMove) -> CacheEntry | None:
            return self._placement_entry(self.live[move.deployment], move.destination)

        timeout = plan_ready_timeout(plan, entry_of, view, self.settings.bandwidth, policy, self.settings.move_seconds)
        return policy.model_copy(update={"ready_timeout_seconds": timeout})

    # ------------------------------------------------------------------------------------------ decisions

    def _try_place(self, deployment: _Deployment, replica: int, now: float, since: float | None) -> bool:
        """Place one replica now, or start a plan for it; False when it must wait or is lost."""
        request = self._request(deployment, replica)
        peers = list(deployment.placements.values())
        started = time.perf_counter()
        placement = self.placer.place(self.pool, request, peers)
        plan = None
        if placement is None and self.settings.rebalance:
            plan = self.placer.make_room(self.pool, request, self._residents(), now, self._in_flight(), peers)
        self.decisions.append(time.perf_counter() - started)
        if placement is not None:
            self._placed(deployment, placement, None if since is None else now - since)
            return True
        if plan is not None and self._start_plan(
            plan, _Waiter(deployment.key, replica, now if since is None else since), now
        ):
            return True
        if since is None and len(self.refusals) < EXAMPLES_KEPT:
            self.refusals.append(getattr(self.placer, "last_reason", "") or f"no room for {request.model.id}")
        return False

    def _start_plan(self, plan: RebalancePlan, waiter: _Waiter, now: float) -> bool:
        if self.settings.move_seconds <= 0 and self.weights is None:
            return self._apply_instantly(plan, waiter, now)
        policy = self._plan_policy(plan)
        try:
            started = start_plan(self.pool, plan)
        except PlanNotStarted:
            return False
        for move in started:
            owner = self.live[move.deployment]
            owner.placements[move.destination.replica] = move.destination
            owner.moves_in_flight += 1
            owner.last_move_at = now
            self._weights_placed(owner, move.destination, counted=False)
        run = _PlanRun(plan, now, [move.record for move in started], waiter, policy)
        self.plans.append(run)
        self._count_plan(plan)
        self._push(now + self.settings.move_seconds, _MOVE_CHECK, "")
        self._push(now + policy.ready_timeout_seconds + 1e-6, _MOVE_CHECK, "")
        self._advance(run, now)
        return True

    def _count_plan(self, plan: RebalancePlan) -> None:
        self.plans_started += 1
        self.moves += len(plan.moves)
        self.devices_disrupted += plan.devices_freed

    def _apply_instantly(self, plan: RebalancePlan, waiter: _Waiter, now: float) -> bool:
        """New copies Ready at once: sources released, destinations and the waiting replica booked, or nothing."""
        if not apply_plan_at_once(self.pool, plan):
            return False
        for move in plan.moves:
            owner = self.live[move.deployment]
            del owner.placements[move.source.replica]
            owner.placements[move.destination.replica] = move.destination
            owner.last_move_at = now
        self._count_plan(plan)
        self._placed(self.live[waiter.key], plan.waiting, now - waiter.since if self.settings.queue else None)
        return True

    def _advance(self, run: _PlanRun, now: float) -> None:
        """Drive every move of a plan one step with the operator's executor; the new copies are Ready
        ``move_seconds`` after the plan started (and, with weights, once fetched and loaded), and a removed
        replica has no pods to wait for."""
        timed = now - run.started >= self.settings.move_seconds
        for position, move in enumerate(run.plan.moves):
            record = run.records[position]
            if record.state in TERMINAL_STATES:
                continue
            owner = self.live.get(move.deployment)
            if owner is None:  # its DSD left: both copies are gone with it
                run.records[position] = record.model_copy(update={"state": MoveState.DONE})
                continue
            weights_ready = self.weights is None or self.weights.ready(f"{owner.key}#{move.destination.replica}", now)
            seen = MoveObservation(
                new_copy_ready=timed and weights_ready,
                old_pods_gone=True,
                seconds_since_start=now - run.started,
                gone_once_removed=True,
            )
            before = dict(owner.placements)
            advanced = advance_move(move.deployment, record, owner.placements, self.pool, seen, run.policy)
            self._released_since(owner, before)
            if advanced.rolled_back:
                self.rolled_back += 1
            if advanced.move.state in TERMINAL_STATES:
                owner.moves_in_flight = max(0, owner.moves_in_flight - 1)
            run.records[position] = advanced.move
        progress = plan_progress(r.state for r in run.records)
        if progress == PlanProgress.IN_FLIGHT:
            return
        self.plans.remove(run)
        if progress == PlanProgress.ABANDONED:  # the moves still under way give their destinations back
            self._abandon(run)
        self._plan_finished(run, progress, now)

    def _abandon(self, run: _PlanRun) -> None:
        for position, move in enumerate(run.plan.moves):
            owner = self.live.get(move.deployment)
            if owner is None:
                continue
            before = dict(owner.placements)
            advanced = abandon_move(move.deployment, run.records[position], owner.placements, self.pool)
            self._released_since(owner, before)
            if advanced.rolled_back:
                owner.moves_in_flight = max(0, owner.moves_in_flight - 1)
                self.rolled_back += 1
            run.records[position] = advanced.move

    def _plan_finished(self, run: _PlanRun, progress: PlanProgress, now: float) -> None:
        """Place the waiting replica once every move is Done (where planned, or wherever it now fits)."""
        deployment = self.live.get(run.waiter.key)
        if deployment is None:
            return
        if progress == PlanProgress.COMPLETE:
            placement: ReplicaPlacement | None = run.plan.waiting
            if not fits_now(self.pool, run.plan.waiting):
                placement = self.placer.place(
                    self.pool, self._request(deployment, run.waiter.replica), list(deployment.placements.values())
                )
            if placement is not None:
                self._placed(deployment, placement, now - run.waiter.since if self.settings.queue else None)
                return
        self._lost_or_queued(run.waiter)

    def _lost_or_queued(self, waiter: _Waiter) -> None:
        if self.settings.queue:
            self.queue.append(waiter)

    # ------------------------------------------------------------------------------------------ events

    def _arrive(self, entry: TraceEntry, now: float) -> None:
        spec = entry.spec
        if self.settings.strategy is not None:
            spec = spec.model_copy(
                update={"placement": spec.placement.model_copy(update={"strategy": self.settings.strategy})}
            )
        deployment = _Deployment(entry=entry, key=f"{NAMESPACE}/{entry.name}", spec=spec)
        if self.weights is not None:
            deployment.weights = request_entry(spec, self.catalog.model(spec.model))
        self.live[deployment.key] = deployment
        self.requested[spec.model] = self.requested.get(spec.model, 0) + spec.replicas
        self._push(entry.leaves_at, _DEPART, deployment.key)
        for replica in range(spec.replicas):
            if not self._try_place(deployment, replica, now, None):
                self._lost_or_queued(_Waiter(deployment.key, replica, now))

    def _depart(self, key: str, now: float) -> None:
        deployment = self.live.pop(key, None)
        if deployment is None:
            return
        for placement in deployment.placements.values():
            self.pool.release(key, placement.replica)
            self._weights_released(deployment, placement)
        waiting = [w for w in self.queue if w.key == key]
        self.never_placed += len(waiting)
        self.queue = [w for w in self.queue if w.key != key]
        self._retry_queue(now)

    def _retry_queue(self, now: float) -> None:
        """Try every waiting replica again, oldest first; those that still do not fit keep their turn.

        A move may have given its new copy the index a waiting replica of the same DSD had (indexes of
        replicas not placed are free, as in the operator, where a DSD's missing replicas are counted): the
        waiter then takes the lowest index its DSD does not use."""
        still: list[_Waiter] = []
        for waiter in self.queue:
            deployment = self.live.get(waiter.key)
            if deployment is None:
                continue
            if waiter.replica in deployment.placements:
                queued = {w.replica for w in [*still, *self.queue] if w.key == waiter.key and w is not waiter}
                used = set(deployment.placements) | queued
                waiter = replace(waiter, replica=next(i for i in range(len(used) + 1) if i not in used))
            if not self._try_place(deployment, waiter.replica, now, waiter.since):
                still.append(waiter)
        self.queue = still

    def _fetch_due(self) -> float:
        return self.weights.next_completion() if self.weights is not None else math.inf

    def _fetch_done(self) -> None:
        """The next fetches finish; moves waiting for a new copy look again when it is Ready."""
        assert self.weights is not None
        for _, ready_at in self.weights.complete_next():
            if self.plans:
                self._push(ready_at, _MOVE_CHECK, "")

    def run(self) -> SimulationReport:
        """Play the whole trace and report."""
        for index, entry in enumerate(self.trace):
            self._push(entry.at, _ARRIVE, str(index))
        first = self.trace[0].at if self.trace else 0.0
        last = self.trace[-1].at if self.trace else 0.0
        self.clock = first
        while self.events or self._fetch_due() < math.inf:
            if self._fetch_due() <= (self.events[0][0] if self.events else math.inf):
                self._fetch_done()
                continue
            at, kind, _, payload = heapq.heappop(self.events)
            if first <= self.clock < last:
                self.booked_area += self._booked() * (min(at, last) - self.clock)
            self.clock = max(self.clock, at)
            if kind == _ARRIVE:
                self._arrive(self.trace[int(payload)], at)
            elif kind == _DEPART:
                self._depart(payload, at)
            else:
                for run in list(self.plans):
                    self._advance(run, at)
                if self.settings.queue:
                    self._retry_queue(at)
            if self.observer is not None:
                self.observer(self, at)
        self.never_placed += len(self.queue)
        return self._report(first, last)

    def _report(self, first: float, last: float) -> SimulationReport:
        requested = sum(self.requested.values())
        placed = sum(self.placed.values())
        span = last - first
        per_model = {
            model: ModelCounts(requested=count, placed=self.placed.get(model, 0))
            for model, count in sorted(self.requested.items())
        }
        examples = self.placer if isinstance(self.placer, DspoolPlacer) else None
        return SimulationReport(
            arrivals=len(self.trace),
            replicas_requested=requested,
            replicas_placed=placed,
            acceptance=round(placed / requested, 4) if requested else 0.0,
            per_model=per_model,
            allocation=round(self.booked_area / (span * self.devices), 4) if span > 0 and self.devices else 0.0,
            moves=self.moves,
            moves_per_arrival=round(self.moves / len(self.trace), 4) if self.trace else 0.0,
            rebalance_plans=self.plans_started,
            rolled_back=self.rolled_back,
            devices_disrupted=self.devices_disrupted,
            decision_seconds=Percentiles(
                p50=round(_percentile(self.decisions, 0.5), 6), p99=round(_percentile(self.decisions, 0.99), 6)
            ),
            waiting=Waiting(
                replicas=len(self.waits),
                never_placed=self.never_placed if self.settings.queue else 0,
                mean_seconds=round(sum(self.waits) / len(self.waits), 1) if self.waits else 0.0,
                p99_seconds=round(_percentile(self.waits, 0.99), 1),
            ),
            pool_nodes=len(self.pool.nodes),
            pool_devices=self.devices,
            refusal_examples=self.refusals,
            plan_examples=examples.plans if examples else [],
            **self._weights_report(),
        )

    def _weights_report(self) -> dict[str, object]:
        if self.weights is None:
            return {}
        stats = self.weights.stats
        everything = [seconds for times in stats.time_to_ready.values() for seconds in times]
        overall = ReadyTimes.of(everything, sum(stats.never_ready.values()))
        models = sorted(set(stats.time_to_ready) | set(stats.never_ready))
        per_model = {
            model: ReadyTimes.of(stats.time_to_ready.get(model, []), stats.never_ready.get(model, 0))
            for model in models
        }
        hits = stats.node_hits / stats.node_placements if stats.node_placements else 0.0
        return {
            "time_to_ready_seconds": TimeToReady(**overall.model_dump(), per_model=per_model),
            "origin_bytes": int(stats.origin_bytes),
            "cache_hit_ratio": round(hits, 4),
        }


def simulate(
    pool: Pool,
    trace: Sequence[TraceEntry],
    catalog: Catalog,
    settings: SimulationSettings | None = None,
    placer: Placer | None = None,
) -> SimulationReport:
    """Run ``trace`` on ``pool`` (changed in place: pass a fresh one) and return the report."""
    return Simulation(pool, trace, catalog, settings, placer).run()
