"""The simulator executes moves exactly as the operator does.

The same trace is played twice. Once by ``dspool simulate`` (rebalancing on, new copies Ready
``MOVE_SECONDS`` after their plan started). Once through the operator's own move path: the DSDs are bodies
in memory (the fake writer stores in their statuses what the functions return), a refused replica goes to
``start_plans`` in mode ``on``, and every pass hands each DSD's ``status.moves`` to ``advance_moves`` with
pods that are Ready when the simulated time says so (a removed replica's pods are gone by the next pass).

After every event of the trace, both must hold the same placements per DSD (so the same devices are booked,
and an old replica is never released earlier in one than in the other) and the same moves in the same
states; at the end, the same moves with the same final states.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dspool.api import (
    DEPLOYMENT_LABEL,
    REPLICA_LABEL,
    DeepSeekDeploymentSpec,
    MoveState,
    PlacementSpec,
    RebalanceConsent,
    ReplicaMove,
    ReplicaPlacement,
    Strategy,
    placements_from_status,
)
from dspool.catalog import builtin_catalog
from dspool.inventory import Pool
from dspool.placement import ReplicaRequest, place_replica
from dspool.rebalance import (
    MoveObservation,
    PlanProgress,
    RebalanceMode,
    RebalancePlan,
    RebalancePolicy,
    RefusedReplica,
    advance_moves,
    cluster_moves,
    fits_now,
    moves_from_status,
    plan_progress,
    start_plans,
    status_with_moves,
)
from dspool.sim import simulate as sim_module
from dspool.sim.fleet import NodeGroup, PoolFile
from dspool.sim.inputs import TraceEntry
from dspool.sim.simulate import (
    NAMESPACE,
    Simulation,
    SimulationSettings,
    pool_from_file,
    trace_demand,
)

CATALOG = builtin_catalog()
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
R1 = "deepseek-r1"
SMALL = "deepseek-r1-distill-qwen-1.5b"
MIX = [R1, "deepseek-r1-distill-llama-70b", "deepseek-r1-distill-qwen-32b", "deepseek-r1-distill-qwen-14b", SMALL]
# Events at one instant, as in the simulator: departures, then moves, then arrivals.
DEPART, MOVE_CHECK, ARRIVE = 0, 1, 2

Placements = dict[str, list[tuple[int, tuple[tuple[str, int], ...]]]]  # DSD -> (replica, (node, devices)...)
MoveKey = tuple[str, str, int, int]  # (for replica, moved DSD, source replica, new copy's replica)
Moves = dict[MoveKey, tuple[tuple[str, ...], tuple[str, ...], MoveState]]  # key -> (from, to, state)


@dataclass
class Trail:
    """What one path did: after every event, the placements and the moves it holds."""

    steps: list[tuple[float, Placements, Moves]] = field(default_factory=list)
    moves: Moves = field(default_factory=dict)  # every move ever started, in its last state


def _placements(by_dsd: dict[str, Sequence[ReplicaPlacement]]) -> Placements:
    return {
        key: sorted((p.replica, tuple((n.name, n.devices) for n in p.nodes)) for p in placements)
        for key, placements in by_dsd.items()
    }


def _move(from_nodes: Any, to_nodes: Any, state: MoveState) -> tuple[tuple[str, ...], tuple[str, ...], MoveState]:
    return tuple(n.name for n in from_nodes), tuple(n.name for n in to_nodes), state


# ------------------------------------------------------------------------------------- the simulator


def simulator_trail(pool: Pool, trace: list[TraceEntry], settings: SimulationSettings) -> Trail:
    """Play the trace with ``dspool simulate``, noting its placements and plans after every event."""
    trail = Trail()
    runs: dict[int, Any] = {}

    def observe(sim: Simulation, now: float) -> None:
        for run in sim.plans:
            runs.setdefault(id(run), run)  # a finished run leaves sim.plans: keep it to read its last states
        for run in runs.values():
            for planned, record in zip(run.plan.moves, run.records, strict=True):
                if planned.deployment not in sim.live:
                    continue  # a move ends with its DSD (the operator forgets its status with it)
                key = (run.plan.for_replica, planned.deployment, record.replica, record.new_replica)
                trail.moves[key] = _move(record.from_nodes, record.to_nodes, record.state)
        placements = _placements({k: list(d.placements.values()) for k, d in sim.live.items()})
        trail.steps.append((now, placements, dict(trail.moves)))

    Simulation(pool, trace, CATALOG, settings, observer=observe).run()
    return trail


# ------------------------------------------------------------------------------- the operator's path


@dataclass
class Started:
    """A plan the operator started, and the replica it makes room for."""

    plan: RebalancePlan
    key: str
    replica: int


class OperatorWorld:
    """DSD bodies in memory, the pool, and the operator's move functions driven on the trace's clock."""

    def __init__(self, pool: Pool, trace: list[TraceEntry], settings: SimulationSettings) -> None:
        self.pool = pool
        self.trace = trace
        self.settings = settings
        self.demand = trace_demand(trace, CATALOG)
        self.bodies: dict[str, dict[str, Any]] = {}  # the fake writer: what the API server stores
        self.started_at: dict[tuple[str, int], float] = {}  # new copy -> when its plan started
        self.records: dict[tuple[str, int], ReplicaMove] = {}  # new copy -> its move's record, last seen
        self.plans: list[Started] = []
        self.trail = Trail()

    # the fake writer and the fake cluster

    def placements(self, key: str) -> dict[int, ReplicaPlacement]:
        return {p.replica: p for p in placements_from_status(self.bodies[key].get("status"))}

    def store(self, key: str, placements: dict[int, ReplicaPlacement], moves: Sequence[Any] | None = None) -> None:
        status = dict(self.bodies[key].get("status") or {})
        status["placements"] = [placements[i].wire() for i in sorted(placements)]
        if moves is not None:
            status["moves"] = [m.wire() for m in moves]
        self.bodies[key]["status"] = status

    def pods(self, key: str, now: float) -> dict[int, list[dict[str, Any]]]:
        """One pod per placed replica: Ready, except a new copy younger than the move time."""
        pods: dict[int, list[dict[str, Any]]] = {}
        for index in self.placements(key):
            started = self.started_at.get((key, index))
            ready = started is None or now - started >= self.settings.move_seconds
            labels = {DEPLOYMENT_LABEL: key.split("/")[1], REPLICA_LABEL: str(index)}
            condition = {"type": "Ready", "status": "True" if ready else "False"}
            pods[index] = [{"metadata": {"labels": labels}, "status": {"phase": "Running", "conditions": [condition]}}]
        return pods

    @staticmethod
    def is_ready(_: ReplicaPlacement, pods: Sequence[Mapping[str, Any]]) -> bool:
        return any(c["status"] == "True" for p in pods for c in p["status"]["conditions"])

    # the operator's passes

    def one_pass(self, now: float) -> bool:
        """``advance_moves`` on every DSD with moves, the result stored; True when a status changed."""
        changed = False
        for key, body in self.bodies.items():
            moves = moves_from_status(body.get("status"))
            if not moves:
                continue
            placements = self.placements(key)
            outcome = advance_moves(
                key, moves, placements, self.pods(key, now), self.pool, START + timedelta(seconds=now),
                self.is_ready, self.settings.policy,
            )  # fmt: skip
            before = dict(body["status"])
            self.store(key, placements, outcome.moves)
            for record in outcome.moves:  # a finished move leaves the status once its cooldown is over
                self.records[(key, record.new_replica)] = record
            changed = changed or body["status"] != before
        return changed

    def passes(self, now: float) -> None:
        """Passes until nothing changes (the removed replicas' pods are gone by the next one), then the
        waiting replicas whose plans are complete are placed."""
        while self.one_pass(now):
            pass
        for started in list(self.plans):
            states = []
            for move in started.plan.moves:
                if move.deployment not in self.bodies:
                    states.append(MoveState.DONE)  # its DSD left: both copies are gone with it
                    continue
                states.append(self.records[(move.deployment, move.destination.replica)].state)
            progress = plan_progress(states)
            if progress == PlanProgress.IN_FLIGHT:
                continue
            self.plans.remove(started)
            if progress == PlanProgress.COMPLETE and started.key in self.bodies:
                self.place_waiting(started, now)

    def place_waiting(self, started: Started, now: float) -> None:
        placements = self.placements(started.key)
        placement: ReplicaPlacement | None = started.plan.waiting
        if not fits_now(self.pool, started.plan.waiting):
            decision = place_replica(
                self.pool, self.request(started.key, started.replica), CATALOG, list(placements.values()), self.demand
            )
            placement = decision.placement
        if placement is not None:
            self.pool.reserve(started.key, placement)
            self.store(started.key, {**placements, placement.replica: placement})

    # the trace

    def request(self, key: str, replica: int) -> ReplicaRequest:
        spec = DeepSeekDeploymentSpec.model_validate(self.bodies[key]["spec"])
        return ReplicaRequest.from_spec(NAMESPACE, key.split("/")[1], replica, spec, CATALOG)

    def arrive(self, entry: TraceEntry, now: float) -> None:
        key = f"{NAMESPACE}/{entry.name}"
        metadata = {"name": entry.name, "namespace": NAMESPACE, "uid": entry.name}
        self.bodies[key] = {"metadata": metadata, "spec": entry.spec.wire(), "status": {"placements": []}}
        for replica in range(entry.spec.replicas):
            request = self.request(key, replica)
            placements = self.placements(key)
            decision = place_replica(self.pool, request, CATALOG, list(placements.values()), self.demand)
            if decision.placement is not None:
                self.pool.reserve(key, decision.placement)
                self.store(key, {**placements, replica: decision.placement})
                continue
            self.start_plan(RefusedReplica(key, request, list(placements.values())), now)

    def start_plan(self, refused: RefusedReplica, now: float) -> None:
        [found] = start_plans(
            self.pool, [refused], list(self.bodies.values()), CATALOG, RebalanceMode.ON,
            START + timedelta(seconds=now), policy=self.settings.policy, demand=self.demand,
        )  # fmt: skip
        if not found.started or found.plan is None:
            return
        for key, (copies, records) in found.writes.items():
            self.bodies[key]["status"] = status_with_moves(self.bodies[key]["status"], copies, records)
            for copy, record in zip(copies, records, strict=True):
                self.started_at[(key, copy.replica)] = now
                self.records[(key, copy.replica)] = record
        self.plans.append(Started(found.plan, refused.deployment, refused.request.replica))
        self.one_pass(now)  # the pass that started it goes on to reconcile the moved DSDs

    def depart(self, key: str) -> None:
        body = self.bodies.pop(key, None)
        for placement in placements_from_status((body or {}).get("status")):
            self.pool.release(key, placement.replica)

    def run(self) -> Trail:
        events: list[tuple[float, int, int, str]] = []
        for index, entry in enumerate(self.trace):
            heapq.heappush(events, (entry.at, ARRIVE, index, str(index)))
        sequence = len(self.trace)
        while events:
            now, kind, _, payload = heapq.heappop(events)
            if kind == ARRIVE:
                entry = self.trace[int(payload)]
                sequence += 1
                heapq.heappush(events, (entry.leaves_at, DEPART, sequence, f"{NAMESPACE}/{entry.name}"))
                plans_before = len(self.plans)
                self.arrive(entry, now)
                for _ in range(len(self.plans) - plans_before):  # when its copies are Ready, or too late
                    for at in (
                        now + self.settings.move_seconds,
                        now + self.settings.policy.ready_timeout_seconds + 1e-6,
                    ):
                        sequence += 1
                        heapq.heappush(events, (at, MOVE_CHECK, sequence, ""))
            elif kind == DEPART:
                self.depart(payload)
            else:
                self.passes(now)
            self.note(now)
        return self.trail

    def note(self, now: float) -> None:
        for (key, _), record in self.records.items():
            if key in self.bodies:  # a move ends with its DSD
                self.trail.moves[(record.for_replica, key, record.replica, record.new_replica)] = _move(
                    record.from_nodes, record.to_nodes, record.state
                )
        placements = _placements({key: list(self.placements(key).values()) for key in self.bodies})
        self.trail.steps.append((now, placements, dict(self.trail.moves)))


# ------------------------------------------------------------------------------------------ the traces


def h200_pool() -> Pool:
    return pool_from_file(
        PoolFile(name="t", groups=[NodeGroup(name="h200", count=2, accelerator="H200-141G")]), CATALOG
    )


def blocked_r1_trace() -> list[TraceEntry]:
    """Two 1.5B replicas spread over two H200s leave no whole H200 for R1 until one of them moves."""
    placement = PlacementSpec(strategy=Strategy.SPREAD, accelerator_types=["H200-141G"])
    small = DeepSeekDeploymentSpec(model=SMALL, replicas=2, placement=placement)
    return [
        TraceEntry(at=0, lifetime=5000, name="small", spec=small),
        TraceEntry(at=10, lifetime=3000, name="r1", spec=DeepSeekDeploymentSpec(model=R1)),
        TraceEntry(at=20, lifetime=100, name="late", spec=DeepSeekDeploymentSpec(model=R1)),
    ]


MIXED = PoolFile(
    name="mixed",
    groups=[
        NodeGroup(name="h200", count=2, accelerator="H200-141G"),
        NodeGroup(name="h100", count=2, accelerator="H100-80G"),
        NodeGroup(name="l20", count=1, accelerator="L20-48G"),
        NodeGroup(name="rtx", count=1, accelerator="RTX4090-24G", devices_per_node=4),
    ],
)


def churn_trace(seed: int, arrivals: int = 40) -> list[TraceEntry]:
    """Arrivals and departures of the DeepSeek mix, spread and binpack, with and without consent to moves."""
    draw = random.Random(seed)
    trace, at = [], 0.0
    for index in range(arrivals):
        at += draw.choice([0, 5, 20, 60])
        consent = draw.choice([RebalanceConsent.ALLOWED, RebalanceConsent.ALLOWED, RebalanceConsent.NEVER])
        placement = PlacementSpec(strategy=draw.choice(list(Strategy)), rebalance=consent)
        spec = DeepSeekDeploymentSpec(model=draw.choice(MIX), replicas=draw.randint(1, 3), placement=placement)
        trace.append(TraceEntry(at=at, lifetime=draw.choice([30, 200, 1500, 4000]), name=f"d{index}", spec=spec))
    return trace


def both(pool: Any, trace: list[TraceEntry], settings: SimulationSettings) -> tuple[Trail, Trail]:
    return simulator_trail(pool(), trace, settings), OperatorWorld(pool(), trace, settings).run()


def assert_same(simulated: Trail, operator: Trail) -> None:
    assert len(simulated.steps) == len(operator.steps)
    for (at, placed, moves), (at_too, placed_too, moves_too) in zip(simulated.steps, operator.steps, strict=True):
        assert (at, placed, moves) == (at_too, placed_too, moves_too), f"paths differ at t={at}"
    assert simulated.moves == operator.moves


# ------------------------------------------------------------------------------------------- the tests


def test_a_move_that_finishes_is_executed_alike_and_the_old_replica_serves_until_the_copy_is_ready() -> None:
    settings = SimulationSettings(rebalance=True, move_seconds=60)
    simulated, operator = both(h200_pool, blocked_r1_trace(), settings)
    assert_same(simulated, operator)
    [(key, (_, _, state))] = simulated.moves.items()
    assert key[:2] == ("sim/r1#0", "sim/small") and state == MoveState.DONE
    placed = {at: placements for at, placements, _ in simulated.steps}
    assert len(placed[20]["sim/small"]) == 3 and not placed[20]["sim/r1"]  # the copy is not Ready: both booked
    assert len(placed[70]["sim/small"]) == 2 and len(placed[70]["sim/r1"]) == 1  # Ready: the old one went


def test_a_copy_never_ready_rolls_back_alike() -> None:
    settings = SimulationSettings(rebalance=True, move_seconds=5000, policy=RebalancePolicy(ready_timeout_seconds=100))
    simulated, operator = both(h200_pool, blocked_r1_trace(), settings)
    assert_same(simulated, operator)
    assert [state for _, _, state in simulated.moves.values()] == [MoveState.ROLLED_BACK]


def churn(seed: int, move_seconds: float) -> tuple[Trail, Trail]:
    policy = RebalancePolicy(max_moves=2, ready_timeout_seconds=900, cooldown_seconds=100)
    settings = SimulationSettings(rebalance=True, move_seconds=move_seconds, policy=policy)
    return both(lambda: pool_from_file(MIXED, CATALOG), churn_trace(seed), settings)


@pytest.mark.parametrize("seed", [3, 12, 16, 21])
@pytest.mark.parametrize("move_seconds", [30.0, 2000.0])  # copies Ready in time; never Ready (rolled back)
def test_churn_moves_are_executed_alike(seed: int, move_seconds: float) -> None:
    simulated, operator = churn(seed, move_seconds)
    assert len(simulated.moves) >= 3, "the trace must make the rebalancer move replicas"
    assert_same(simulated, operator)


@pytest.mark.parametrize("seed", [19, 22])
def test_moves_of_a_dsd_that_left_count_alike_towards_the_in_flight_limit(seed: int) -> None:
    # found by this comparison: the simulator counted a departed DSD's moves until its next move check
    assert_same(*churn(seed, 2000.0))


@pytest.mark.parametrize("path", [sim_module, cluster_moves], ids=["simulator", "operator"])
def test_the_comparison_fails_when_one_path_releases_the_old_replica_before_the_copy_is_ready(
    path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = path.advance_move

    def too_early(deployment: str, move: Any, placements: Any, pool: Any, seen: Any, policy: Any) -> Any:
        hurried = MoveObservation(True, seen.old_pods_gone, seen.seconds_since_start, seen.gone_once_removed)
        return real(deployment, move, placements, pool, hurried, policy)

    monkeypatch.setattr(path, "advance_move", too_early)
    simulated, operator = both(h200_pool, blocked_r1_trace(), SimulationSettings(rebalance=True, move_seconds=60))
    with pytest.raises(AssertionError, match="paths differ at t=10"):
        assert_same(simulated, operator)
