"""The move executor: start a plan, advance a move one step, abandon a move. Pure.

The operator (:func:`dspool.rebalance.cluster_moves.advance_moves`, inside a DSD's reconcile pass) and
``dspool simulate`` both execute moves with these functions, so both book, release and change states the
same way. They differ only in how they observe a move (:class:`MoveObservation`: the new copy's pods Ready
and the old one's gone, or the simulated clock) and where they keep what comes back (the DSDs' statuses,
or memory).

1. :func:`start_plan`: book every destination while the old replicas keep their devices (all or none) and
   return, per move, the new copy to add to its DSD's placements and its ``status.moves`` record
   (``DestinationReserved``). The caller stores both before creating any workload, as for every placement.
2. :func:`advance_move`, every time the caller looks at a move: the facts come from the DSD's placements
   and the observation; :func:`dspool.rebalance.state.next_move_step` says what to do; the old replica is
   removed (released in the pool and dropped from the placements) only while the new copy is Ready; a move
   whose new copy is not Ready in time, or whose destination was lost, rolls back (the new copy released).
3. :func:`abandon_move`: a plan with a move rolled back gives the destinations of its other moves back
   (``dspool simulate`` does so; the operator lets each move of another DSD finish or time out on its own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dspool.api import MoveState, ReplicaMove, ReplicaPlacement
from dspool.inventory import Pool
from dspool.placement import InsufficientDevicesError
from dspool.rebalance.planner import PlannedMove, RebalancePlan, RebalancePolicy
from dspool.rebalance.state import TERMINAL_STATES, MoveAction, MoveFacts, next_move_step
from dspool.weights.entries import CacheEntry
from dspool.weights.estimate import Bandwidth, fetches_in_flight, time_to_ready
from dspool.weights.state import CacheView

MOVED = "Moved"  # event reason: the old replica was removed, its new copy serves
MOVE_ROLLED_BACK = "MoveRolledBack"  # event reason: the new copy was given up, the old replica stays
DESTINATION_LOST = "its destination was lost (node gone or NotReady)"


@dataclass
class MoveEvent:
    """An event for the DSD whose replica moves (the pass posts it); ``devices`` = devices a move freed."""

    type: str
    reason: str
    message: str
    devices: int = 0


class PlanNotStarted(Exception):
    """A plan's destinations could not all be booked (nothing was)."""


@dataclass(frozen=True)
class StartedMove:
    """One move of a started plan: the DSD that moves, its new copy, and the move's record."""

    deployment: str
    destination: ReplicaPlacement  # add it to the DSD's placements (under its fresh replica index)
    record: ReplicaMove  # its ``status.moves`` entry, in state DestinationReserved


@dataclass(frozen=True)
class MoveObservation:
    """What the caller saw of one move, besides the DSD's placements (which the executor reads itself)."""

    new_copy_ready: bool  # the new copy serves
    old_pods_gone: bool  # no live pod of the old replica is left (its devices are really free)
    seconds_since_start: float  # since the destination was booked
    gone_once_removed: bool = False  # the old replica has no pods to wait for (the simulator): Done at once


@dataclass
class MoveAdvance:
    """A move after one step: its record (new state), and the event to tell, if any."""

    move: ReplicaMove
    event: MoveEvent | None = None

    @property
    def rolled_back(self) -> bool:
        """Whether this step gave the new copy up."""
        return self.event is not None and self.event.reason == MOVE_ROLLED_BACK


def book_destinations(pool: Pool, plan: RebalancePlan) -> None:
    """Reserve every destination of the plan, all or none (``InsufficientDevicesError`` books nothing)."""
    booked: list[PlannedMove] = []
    try:
        for move in plan.moves:
            pool.reserve(move.deployment, move.destination)
            booked.append(move)
    except (InsufficientDevicesError, ValueError):
        for move in booked:
            release_destination(pool, move)
        raise


def release_destination(pool: Pool, move: PlannedMove) -> None:
    """Give back a destination (roll back, or the plan could not start)."""
    pool.release(move.deployment, move.destination.replica)


def release_source(pool: Pool, move: PlannedMove) -> None:
    """Give back the devices the old replica held (once it is removed)."""
    pool.release(move.deployment, move.source.replica)


def start_plan(
    pool: Pool, plan: RebalancePlan, started_at: str | None = None, ready_timeout_seconds: float | None = None
) -> list[StartedMove]:
    """Book every destination of ``plan`` in ``pool`` and return the started moves, in the plan's order.

    Raises :class:`PlanNotStarted` (with the reason) when one destination cannot be booked: then nothing
    is. ``started_at`` goes on the records (the operator's cooldown and timeout count from it), and so does
    ``ready_timeout_seconds`` (a timeout longer than the policy's, for copies whose weights are fetched first)."""
    try:
        book_destinations(pool, plan)
    except (InsufficientDevicesError, ValueError) as exc:
        raise PlanNotStarted(str(exc)) from exc
    return [
        StartedMove(
            move.deployment,
            move.destination,
            move.record(plan.for_replica, MoveState.DESTINATION_RESERVED, started_at).model_copy(
                update={"ready_timeout_seconds": ready_timeout_seconds}
            ),
        )
        for move in plan.moves
    ]


READY_TIMEOUT_FACTOR = 2.0  # a move's new copy may take twice its estimated time-to-ready before rolling back


def plan_ready_timeout(
    plan: RebalancePlan,
    entry_of: Callable[[PlannedMove], CacheEntry | None],
    cache: CacheView,
    bandwidth: Bandwidth,
    policy: RebalancePolicy,
    start_seconds: float = 0.0,
) -> float:
    """How long a plan's new copies may take before rolling back: READY_TIMEOUT_FACTOR x the slowest copy's
    estimated time-to-ready (its weights fetched where missing, then loaded; ``start_seconds`` more for the
    engine's own start), never less than ``policy.ready_timeout_seconds``. ``entry_of``: the checkpoint a
    move's new copy serves (None: weights on the DSD's own volume)."""
    slowest = 0.0
    in_flight = fetches_in_flight(cache)
    for move in plan.moves:
        entry = entry_of(move)
        if entry is not None:
            nodes = [n.name for n in move.destination.nodes]
            estimate = time_to_ready(entry.id, entry.size_bytes, nodes, cache, bandwidth, in_flight)
            slowest = max(slowest, estimate.seconds)
    return max(policy.ready_timeout_seconds, READY_TIMEOUT_FACTOR * (slowest + start_seconds))


def fits_now(pool: Pool, placement: ReplicaPlacement) -> bool:
    """Whether every node of the placement is in the pool with enough free devices now."""
    return all(n.name in pool.nodes and pool.nodes[n.name].free >= n.devices for n in placement.nodes)


def apply_plan_at_once(pool: Pool, plan: RebalancePlan) -> bool:
    """Every move of ``plan`` done at once, for new copies that take no time to start (``dspool simulate``
    with no move time, and the re-pack baseline of the churn benchmark): the sources released, the
    destinations booked, and the waiting replica's planned place still free; or nothing changes (False).

    Release-then-book, so plans that reuse freed devices apply too. The operator never does this: its new
    copies take time, and its moves go through :func:`start_plan` and :func:`advance_move`."""
    for move in plan.moves:
        release_source(pool, move)
    booked: list[PlannedMove] = []
    try:
        for move in plan.moves:
            pool.reserve(move.deployment, move.destination)
            booked.append(move)
        if not fits_now(pool, plan.waiting):
            raise InsufficientDevicesError(f"{plan.deployment} replica {plan.replica} no longer fits")
    except (InsufficientDevicesError, ValueError):
        for move in booked:
            release_destination(pool, move)
        for move in plan.moves:
            pool.reserve(move.deployment, move.source)
        return False
    return True


def _moved(move: ReplicaMove) -> MoveEvent:
    source, to = (", ".join(n.name for n in nodes) for nodes in (move.from_nodes, move.to_nodes))
    message = (
        f"replica {move.replica} moved from {source} to replica {move.new_replica} on {to} to make "
        f"room for {move.for_replica}; the new copy is Ready"
    )
    return MoveEvent("Normal", MOVED, message, sum(n.devices for n in move.from_nodes))


def _stays(move: ReplicaMove, why: str) -> MoveEvent:
    return MoveEvent("Warning", MOVE_ROLLED_BACK, f"replica {move.replica} stays: {why}")


def advance_move(
    deployment: str,
    move: ReplicaMove,
    placements: dict[int, ReplicaPlacement],
    pool: Pool,
    seen: MoveObservation,
    policy: RebalancePolicy | None = None,
) -> MoveAdvance:
    """Drive one move of ``deployment`` (``namespace/name``) one step; ``placements`` (the DSD's, by replica
    index) and ``pool`` are updated in place when the old replica is removed or the new copy rolled back.

    A finished move (Done, RolledBack) is returned as it is. A move past Planned whose new copy is no longer
    among the placements lost its destination: it rolls back. Otherwise :func:`next_move_step` decides, from
    the placements (new copy booked? old replica removed?) and ``seen``."""
    if move.state in TERMINAL_STATES:
        return MoveAdvance(move)
    new_copy = placements.get(move.new_replica)
    old = placements.get(move.replica)
    if new_copy is None and move.state != MoveState.PLANNED:
        lost = move.model_copy(update={"state": MoveState.ROLLED_BACK, "reason": DESTINATION_LOST})
        return MoveAdvance(lost, _stays(move, DESTINATION_LOST))
    facts = MoveFacts(
        destination_reserved=new_copy is not None,
        new_replica_created=new_copy is not None,
        new_replica_ready=new_copy is not None and seen.new_copy_ready,
        old_replica_removed=old is None,
        old_replica_gone=old is None and seen.old_pods_gone,
        seconds_since_start=seen.seconds_since_start,
    )
    if move.ready_timeout_seconds is not None:  # its weights had to be fetched: the timeout it started with
        policy = (policy or RebalancePolicy()).model_copy(update={"ready_timeout_seconds": move.ready_timeout_seconds})
    step = next_move_step(move.state, facts, policy)
    event = None
    if step.action == MoveAction.REMOVE_OLD_REPLICA and old is not None:
        pool.release(deployment, move.replica)
        del placements[move.replica]
        removed = {"old_replica_removed": True, **({"old_replica_gone": True} if seen.gone_once_removed else {})}
        step = next_move_step(step.state, facts.model_copy(update=removed), policy)
        event = _moved(move)
    elif step.action == MoveAction.ROLL_BACK and new_copy is not None:
        pool.release(deployment, move.new_replica)
        del placements[move.new_replica]
        event = _stays(move, step.reason)
    return MoveAdvance(move.model_copy(update={"state": step.state}), event)


def abandon_move(
    deployment: str, move: ReplicaMove, placements: dict[int, ReplicaPlacement], pool: Pool
) -> MoveAdvance:
    """Roll back a move because its plan is abandoned (another of its moves rolled back): the new copy is
    released and the old replica stays. A finished move, or one whose old replica is already removed (its
    new copy now serves in its place), is returned as it is."""
    if move.state in TERMINAL_STATES or move.replica not in placements:
        return MoveAdvance(move)
    pool.release(deployment, move.new_replica)
    placements.pop(move.new_replica, None)
    rolled_back = move.model_copy(update={"state": MoveState.ROLLED_BACK})
    return MoveAdvance(rolled_back, _stays(move, "its plan was abandoned (another move rolled back)"))
