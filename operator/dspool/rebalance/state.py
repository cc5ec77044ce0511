"""The move state machine: where one make-before-break move is, and what to do next. Pure.

:func:`next_move_step` is the only place that decides a move's next state; :mod:`dspool.rebalance.executor`
performs what it asks for (for the operator and for ``dspool simulate`` alike).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, Field

from dspool.api import MoveState
from dspool.rebalance.planner import RebalancePolicy


class MoveAction(StrEnum):
    """What the operator does next for a move."""

    RESERVE_DESTINATION = "ReserveDestination"  # book it and record it in status, before any workload
    CREATE_NEW_REPLICA = "CreateNewReplica"  # build and apply the destination's workloads
    WAIT = "Wait"
    REMOVE_OLD_REPLICA = "RemoveOldReplica"  # delete the old replica's workloads and release its placement
    ROLL_BACK = "RollBack"  # delete the new copy's workloads and release the destination; the old one stays
    NOTHING = "Nothing"


class MoveFacts(BaseModel):
    """What the operator observed about one move in this pass."""

    destination_reserved: bool = False
    new_replica_created: bool = False
    new_replica_ready: bool = False
    old_replica_removed: bool = False
    old_replica_gone: bool = False  # its pods are gone, so its devices are really free
    seconds_since_start: float = Field(default=0.0, ge=0, description="since the destination was reserved")


class MoveStep(BaseModel):
    """The next state of a move and what to do about it."""

    state: MoveState
    action: MoveAction
    reason: str


TERMINAL_STATES = frozenset({MoveState.DONE, MoveState.ROLLED_BACK})
# States in which the destination is booked (the new copy's reservation) and in which the old copy still
# holds its devices. Both hold during NewReplicaStarting/Ready: that is make-before-break.
HOLDS_DESTINATION = frozenset(
    {
        MoveState.DESTINATION_RESERVED,
        MoveState.NEW_REPLICA_STARTING,
        MoveState.NEW_REPLICA_READY,
        MoveState.OLD_REMOVED,
        MoveState.DONE,
    }
)
HOLDS_SOURCE = frozenset(
    {
        MoveState.PLANNED,
        MoveState.DESTINATION_RESERVED,
        MoveState.NEW_REPLICA_STARTING,
        MoveState.NEW_REPLICA_READY,
        MoveState.ROLLED_BACK,
    }
)


def _one_step(state: MoveState, facts: MoveFacts, policy: RebalancePolicy) -> MoveStep:
    timed_out = facts.seconds_since_start > policy.ready_timeout_seconds
    if state == MoveState.PLANNED:
        if facts.destination_reserved:
            return MoveStep(state=MoveState.DESTINATION_RESERVED, action=MoveAction.CREATE_NEW_REPLICA, reason="")
        return MoveStep(state=state, action=MoveAction.RESERVE_DESTINATION, reason="destination not booked yet")
    if state in (MoveState.DESTINATION_RESERVED, MoveState.NEW_REPLICA_STARTING) and timed_out:
        return MoveStep(
            state=MoveState.ROLLED_BACK,
            action=MoveAction.ROLL_BACK,
            reason=f"new copy not Ready after {policy.ready_timeout_seconds:.0f}s; the old replica keeps serving",
        )
    if state == MoveState.DESTINATION_RESERVED:
        if facts.new_replica_created:
            return MoveStep(state=MoveState.NEW_REPLICA_STARTING, action=MoveAction.WAIT, reason="")
        return MoveStep(state=state, action=MoveAction.CREATE_NEW_REPLICA, reason="new copy not created yet")
    if state == MoveState.NEW_REPLICA_STARTING:
        if facts.new_replica_ready:
            return MoveStep(state=MoveState.NEW_REPLICA_READY, action=MoveAction.REMOVE_OLD_REPLICA, reason="")
        return MoveStep(state=state, action=MoveAction.WAIT, reason="waiting for the new copy to be Ready")
    if state == MoveState.NEW_REPLICA_READY:
        if facts.old_replica_removed:
            return MoveStep(state=MoveState.OLD_REMOVED, action=MoveAction.WAIT, reason="")
        if not facts.new_replica_ready:  # it stopped serving: never remove the old one now
            return MoveStep(
                state=MoveState.NEW_REPLICA_STARTING, action=MoveAction.WAIT, reason="new copy no longer Ready"
            )
        return MoveStep(state=state, action=MoveAction.REMOVE_OLD_REPLICA, reason="new copy Ready")
    if state == MoveState.OLD_REMOVED:
        if facts.old_replica_gone:
            return MoveStep(state=MoveState.DONE, action=MoveAction.NOTHING, reason="moved")
        return MoveStep(state=state, action=MoveAction.WAIT, reason="waiting for the old pods to be gone")
    return MoveStep(state=state, action=MoveAction.NOTHING, reason="finished")


def next_move_step(state: MoveState, facts: MoveFacts, policy: RebalancePolicy | None = None) -> MoveStep:
    """Advance a move as far as the observed facts allow and say what to do next.

    Transitions: Planned -> DestinationReserved (booked) -> NewReplicaStarting (created) -> NewReplicaReady
    (Ready) -> OldRemoved (old removed) -> Done (old pods gone). DestinationReserved or NewReplicaStarting
    past ``ready_timeout_seconds`` -> RolledBack. A new copy that stops being Ready before the old one is
    removed sends the move back to NewReplicaStarting, so ``RemoveOldReplica`` is only ever asked for while
    the new copy serves: a DSD never has fewer Ready replicas than before the move.
    """
    policy = policy or RebalancePolicy()
    step = _one_step(state, facts, policy)
    reasons = [step.reason] if step.reason else []
    while step.state != state and step.state not in TERMINAL_STATES:
        state = step.state
        step = _one_step(state, facts, policy)
        if step.reason:
            reasons.append(step.reason)
        if step.state == state:
            break
    return MoveStep(state=step.state, action=step.action, reason="; ".join(reasons) or step.state.value)


class PlanProgress(StrEnum):
    """Where a whole plan is."""

    IN_FLIGHT = "InFlight"
    COMPLETE = "Complete"  # every move Done: place the waiting replica
    ABANDONED = "Abandoned"  # a move rolled back: the waiting replica stays refused


def plan_progress(states: Iterable[MoveState]) -> PlanProgress:
    """The plan's progress from its moves' states."""
    listed = list(states)
    if any(s == MoveState.ROLLED_BACK for s in listed):
        return PlanProgress.ABANDONED
    if all(s == MoveState.DONE for s in listed):
        return PlanProgress.COMPLETE
    return PlanProgress.IN_FLIGHT


# A move in one of these states holds a new copy that is not yet an ordinary replica (no scale-down takes
# it, no second replica is placed for it), and its DSD has a move in flight.
IN_FLIGHT_STATES = frozenset(
    {MoveState.PLANNED, MoveState.DESTINATION_RESERVED, MoveState.NEW_REPLICA_STARTING, MoveState.NEW_REPLICA_READY}
)
