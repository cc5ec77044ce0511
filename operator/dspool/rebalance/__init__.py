"""Rebalancing: make-before-break moves of other DSDs' replicas that make room for a refused one. Pure.

- :mod:`~dspool.rebalance.planner`: :func:`plan_rebalance` finds the cheapest set of moves, or says why
  there is none.
- :mod:`~dspool.rebalance.state`: the move state machine (:func:`next_move_step`, :func:`plan_progress`).
- :mod:`~dspool.rebalance.executor`: the one executor of moves (start a plan, advance a move, abandon one),
  which the operator and ``dspool simulate`` share.
- :mod:`~dspool.rebalance.cluster_moves`: what only the operator does: ``status.moves``, pods, PDBs, and
  the pass's rebalancing (:func:`rebalance_for_pass`).

How the operator drives a plan (one reconcile pass at a time; ``dspool simulate`` executes moves with the
same executor, on a simulated clock):

1. W refused, rebalancing on, no plan for W in flight: :func:`plan_rebalance` with every other DSD as a
   :class:`ResidentDeployment` (spec, ``status.placements``, PDB budget, moves in flight, last move time);
   the outcome's reason goes on W's DSD either way.
2. With a plan: :func:`start_plan` books every destination (all or none); each destination goes into its
   DSD's ``status.placements`` (a fresh index) with its record in ``status.moves``, before any workload.
3. Every pass, for each ``status.moves`` entry: :func:`advance_move` with what the pass observed; it removes
   the old replica only when the new copy is Ready, or rolls back when it is not Ready in time.
4. When :func:`plan_progress` says ``Complete``, W is placed as usual: the freed nodes are now its best fit
   (``plan.waiting`` is where it was planned). ``Abandoned`` (a move rolled back): W stays refused; the
   moves already past ``NewReplicaReady`` have simply moved.
"""

from dspool.rebalance.cluster_moves import (
    MovesOutcome,
    MoveWrites,
    PassRebalance,
    RebalanceMode,
    RefusedReplica,
    StartedPlan,
    advance_moves,
    moves_from_status,
    pdb_budgets,
    rebalance_for_pass,
    refused_replica,
    residents_of,
    start_plans,
    status_with_moves,
    waiting_notes,
    waiting_on,
)
from dspool.rebalance.executor import (
    MOVE_ROLLED_BACK,
    MOVED,
    READY_TIMEOUT_FACTOR,
    MoveAdvance,
    MoveEvent,
    MoveObservation,
    PlanNotStarted,
    StartedMove,
    abandon_move,
    advance_move,
    apply_plan_at_once,
    book_destinations,
    fits_now,
    plan_ready_timeout,
    release_destination,
    release_source,
    start_plan,
)
from dspool.rebalance.planner import (
    MAX_ENUMERATED_PER_NODE,
    MAX_MOVES_LIMIT,
    PlannedMove,
    RebalanceOutcome,
    RebalancePlan,
    RebalancePolicy,
    ResidentDeployment,
    plan_rebalance,
)
from dspool.rebalance.state import (
    HOLDS_DESTINATION,
    HOLDS_SOURCE,
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    MoveAction,
    MoveFacts,
    MoveStep,
    PlanProgress,
    next_move_step,
    plan_progress,
)

__all__ = [
    "HOLDS_DESTINATION",
    "HOLDS_SOURCE",
    "IN_FLIGHT_STATES",
    "MAX_ENUMERATED_PER_NODE",
    "MAX_MOVES_LIMIT",
    "MOVED",
    "MOVE_ROLLED_BACK",
    "READY_TIMEOUT_FACTOR",
    "TERMINAL_STATES",
    "MoveAction",
    "MoveAdvance",
    "MoveEvent",
    "MoveFacts",
    "MoveObservation",
    "MoveStep",
    "MoveWrites",
    "MovesOutcome",
    "PassRebalance",
    "PlanNotStarted",
    "PlanProgress",
    "PlannedMove",
    "RebalanceMode",
    "RebalanceOutcome",
    "RebalancePlan",
    "RebalancePolicy",
    "RefusedReplica",
    "ResidentDeployment",
    "StartedMove",
    "StartedPlan",
    "abandon_move",
    "advance_move",
    "advance_moves",
    "apply_plan_at_once",
    "book_destinations",
    "fits_now",
    "moves_from_status",
    "next_move_step",
    "pdb_budgets",
    "plan_progress",
    "plan_ready_timeout",
    "plan_rebalance",
    "rebalance_for_pass",
    "refused_replica",
    "release_destination",
    "release_source",
    "residents_of",
    "start_plan",
    "start_plans",
    "status_with_moves",
    "waiting_notes",
    "waiting_on",
]
