"""The rebalancer: which replicas move to make room, the rules it never breaks, and the move state machine."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_placement import node, pool_of

from dspool.api import (
    DeepSeekDeploymentSpec,
    MoveState,
    NodeDevices,
    PlacementSpec,
    RebalanceConsent,
    ReplicaPlacement,
)
from dspool.catalog import Precision, builtin_catalog
from dspool.inventory import Pool
from dspool.placement import ReplicaRequest, reserve
from dspool.rebalance import (
    HOLDS_DESTINATION,
    HOLDS_SOURCE,
    MoveAction,
    MoveFacts,
    MoveObservation,
    PlannedMove,
    PlanProgress,
    RebalancePlan,
    RebalancePolicy,
    ResidentDeployment,
    advance_move,
    book_destinations,
    next_move_step,
    plan_progress,
    plan_ready_timeout,
    plan_rebalance,
    release_source,
    start_plan,
)
from dspool.sizing import Backend
from dspool.weights.entries import CacheEntry, entry_for
from dspool.weights.estimate import Bandwidth
from dspool.weights.state import CacheView, EntryState, NodeEntry, NodeModelCache

CATALOG = builtin_catalog()
R1 = "deepseek-r1"
LLAMA70 = "deepseek-r1-distill-llama-70b"
QWEN32 = "deepseek-r1-distill-qwen-32b"
SMALL = "deepseek-r1-distill-qwen-1.5b"


def held(accelerator: str, replica: int, *nodes: tuple[str, int]) -> ReplicaPlacement:
    return ReplicaPlacement(
        replica=replica,
        accelerator=accelerator,
        precision=Precision.BF16,
        backend=Backend.VLLM,
        tensor_parallel=nodes[0][1],
        pipeline_parallel=len(nodes),
        max_model_len=4096,
        nodes=[NodeDevices(name=n, devices=d) for n, d in nodes],
    )


def resident(pool: Pool, name: str, model: str, *placements: ReplicaPlacement, **fields: Any) -> ResidentDeployment:
    """A DSD holding these placements, booked in the pool."""
    consent = fields.pop("consent", RebalanceConsent.ALLOWED)
    key = f"ai/{name}"
    for placement in placements:
        reserve(pool, key, placement)
    spec = DeepSeekDeploymentSpec(model=model, replicas=len(placements), placement=PlacementSpec(rebalance=consent))
    return ResidentDeployment(deployment=key, spec=spec, placements=list(placements), **fields)


def r1_request(**fields: Any) -> ReplicaRequest:
    return ReplicaRequest(deployment="ai/r1", replica=0, model=CATALOG.model(R1), **fields)


def h100_pool() -> Pool:
    """Four H100s in rack-a (two of them taken by other work), two free L20s in rack-b."""
    return pool_of(
        node("h100-0", "H100-80G", fabric="rack-a", used=8),
        node("h100-1", "H100-80G", fabric="rack-a", used=8),
        node("h100-2", "H100-80G", fabric="rack-a"),
        node("h100-3", "H100-80G", fabric="rack-a"),
        node("l20-0", "L20-48G", fabric="rack-b"),
        node("l20-1", "L20-48G", fabric="rack-b"),
    )


def h100_residents(pool: Pool, **llama_fields: Any) -> list[ResidentDeployment]:
    return [
        resident(pool, "qwen-32b", QWEN32, held("H100-80G", 0, ("l20-1", 2)), held("H100-80G", 1, ("h100-3", 1))),
        resident(pool, "llama-70b", LLAMA70, held("H100-80G", 0, ("h100-2", 4)), **llama_fields),
    ]


ONLY_H100 = {"accelerator_types": ["H100-80G"]}


# ---------------------------------------------------------------------------------------------- planning


def test_r1_gets_two_h100s_by_moving_the_two_small_replicas_in_its_way() -> None:
    pool = h100_pool()
    residents = h100_residents(pool)
    before = pool.model_dump()
    outcome = plan_rebalance(pool, r1_request(**ONLY_H100), residents, CATALOG)
    plan = outcome.plan
    assert plan is not None, outcome.reason
    assert pool.model_dump() == before  # planning leaves no trace
    assert [(m.deployment, m.replica, [n.name for n in m.from_nodes]) for m in plan.moves] == [
        ("ai/llama-70b", 0, ["h100-2"]),
        ("ai/qwen-32b", 1, ["h100-3"]),
    ]
    assert all(m.accelerator == "L20-48G" for m in plan.moves)
    assert [n.name for n in plan.waiting.nodes] == ["h100-2", "h100-3"]
    assert plan.devices_freed == 5
    assert outcome.reason.startswith("to place r1#0 (2 x 8 H100-80G in rack-a): move llama-70b#0 h100-2 -> l20-")
    assert outcome.reason.endswith("; 2 moves, 5 devices disrupted")
    # the new copies get fresh replica indexes, never one their DSD already uses
    assert {m.destination.replica for m in plan.moves if m.deployment == "ai/qwen-32b"} == {2}


def test_the_plan_runs_make_before_break_without_booking_a_device_twice() -> None:
    pool = h100_pool()
    plan = plan_rebalance(pool, r1_request(**ONLY_H100), h100_residents(pool), CATALOG).plan
    assert plan is not None
    book_destinations(pool, plan)  # old copies still hold their devices
    assert all(n.used + n.reserved <= n.allocatable for n in pool.nodes.values())
    for move in plan.moves:
        release_source(pool, move)
    reserve(pool, plan.deployment, plan.waiting)
    assert all(n.used + n.reserved <= n.allocatable for n in pool.nodes.values())


def test_a_dsd_that_says_never_is_not_moved() -> None:
    pool = h100_pool()
    outcome = plan_rebalance(
        pool, r1_request(**ONLY_H100), h100_residents(pool, consent=RebalanceConsent.NEVER), CATALOG
    )
    assert outcome.plan is None
    assert "1 replica of DSDs with rebalance: Never" in outcome.reason


def test_a_replica_whose_disruption_budget_is_spent_is_not_moved() -> None:
    pool = h100_pool()
    outcome = plan_rebalance(pool, r1_request(**ONLY_H100), h100_residents(pool, disruptions_allowed=0), CATALOG)
    assert outcome.plan is None
    assert "whose PodDisruptionBudget allows no disruption" in outcome.reason


def test_a_budget_of_one_moves_at_most_one_replica_of_that_dsd() -> None:
    pool = h100_pool()
    both = resident(pool, "qwen-32b", QWEN32, held("H100-80G", 0, ("h100-2", 1)), held("H100-80G", 1, ("h100-3", 1)))
    assert plan_rebalance(pool, r1_request(**ONLY_H100), [both], CATALOG).plan is not None
    limited = both.model_copy(update={"disruptions_allowed": 1})
    outcome = plan_rebalance(pool, r1_request(**ONLY_H100), [limited], CATALOG)
    assert outcome.plan is None and "no set of at most 4 movable replicas makes room" in outcome.reason


def test_the_waiting_dsd_never_moves_its_own_replicas() -> None:
    pool = pool_of(node("h100-0", "H100-80G"), node("l20-0", "L20-48G"))
    own = resident(pool, "llama", LLAMA70, held("H100-80G", 0, ("h100-0", 4)))
    other = resident(pool, "qwen", QWEN32, held("H100-80G", 0, ("h100-0", 1)))
    waiting = ReplicaRequest(deployment="ai/llama", replica=1, model=CATALOG.model(LLAMA70), **ONLY_H100)
    plan = plan_rebalance(pool, waiting, [own, other], CATALOG).plan
    assert plan is not None
    assert [(m.deployment, m.replica) for m in plan.moves] == [("ai/qwen", 0)]
    alone = plan_rebalance(pool, waiting, [own], CATALOG)
    assert alone.plan is None


def test_fewest_devices_disrupted_first_then_fewest_moves() -> None:
    pool = pool_of(node("h200-a", "H200-141G"), node("h200-b", "H200-141G"), node("rtx-0", "RTX4090-24G"))
    llama = resident(pool, "llama", LLAMA70, held("H200-141G", 0, ("h200-a", 2)))
    small = resident(pool, "small", SMALL, held("H200-141G", 0, ("h200-b", 1)))
    plan = plan_rebalance(pool, r1_request(), [llama, small], CATALOG).plan
    assert plan is not None and [m.deployment for m in plan.moves] == ["ai/small"]  # 1 device beats 2
    pool = pool_of(node("h200-a", "H200-141G"), node("h200-b", "H200-141G"), node("rtx-0", "RTX4090-24G"))
    llama = resident(pool, "llama", LLAMA70, held("H200-141G", 0, ("h200-a", 2)))
    small = resident(pool, "small", SMALL, held("H200-141G", 0, ("h200-b", 1)), held("H200-141G", 1, ("h200-b", 1)))
    plan = plan_rebalance(pool, r1_request(), [llama, small], CATALOG).plan
    assert plan is not None and [m.deployment for m in plan.moves] == ["ai/llama"]  # 2 devices, 1 move beats 2


def test_no_plan_when_a_moved_replica_would_have_no_home() -> None:
    pool = pool_of(
        node("h100-2", "H100-80G", fabric="rack-a"),
        node("h100-3", "H100-80G", fabric="rack-a"),
        node("l20-0", "L20-48G", fabric="rack-b", used=7),
    )
    residents = [resident(pool, "llama", LLAMA70, held("H100-80G", 0, ("h100-2", 4)))]
    before = pool.model_dump()
    outcome = plan_rebalance(pool, r1_request(**ONLY_H100), residents, CATALOG)
    assert outcome.plan is None
    assert "none has a home for every moved replica" in outcome.reason and "llama#0 has no home" in outcome.reason
    assert pool.model_dump() == before


def test_cooldown_and_moves_in_flight_hold_replicas_back() -> None:
    pool = h100_pool()
    policy = RebalancePolicy(cooldown_seconds=300)
    cooling = h100_residents(pool, last_move_at=1000.0)
    outcome = plan_rebalance(pool, r1_request(**ONLY_H100), cooling, CATALOG, policy, now=1100.0)
    assert outcome.plan is None and "moved less than 300s ago" in outcome.reason
    assert plan_rebalance(pool, r1_request(**ONLY_H100), cooling, CATALOG, policy, now=1400.0).plan is not None
    busy = plan_rebalance(pool, r1_request(**ONLY_H100), cooling, CATALOG, policy, now=1400.0, in_flight=4)
    assert busy.plan is None and "4 moves in flight (limit 4)" in busy.reason
    tight = plan_rebalance(pool, r1_request(**ONLY_H100), cooling, CATALOG, policy, now=1400.0, in_flight=3)
    assert tight.plan is None  # two moves needed, one left in the pool-wide budget


def test_the_status_record_of_a_move() -> None:
    pool = h100_pool()
    plan = plan_rebalance(pool, r1_request(**ONLY_H100), h100_residents(pool), CATALOG).plan
    assert plan is not None
    record = plan.moves[1].record(plan.for_replica, MoveState.DESTINATION_RESERVED, "2026-12-02T10:00:00Z")
    wire = record.wire()
    assert wire["replica"] == 1 and wire["newReplica"] == 2 and wire["forReplica"] == "ai/r1#0"
    assert wire["fromNodes"] == [{"name": "h100-3", "devices": 1}] and wire["state"] == "DestinationReserved"


# --------------------------------------------------------------------------------------------- properties

MODELS = [LLAMA70, QWEN32, SMALL, "deepseek-r1-distill-qwen-14b"]
WORLD_NODES = [
    ("h200-0", "H200-141G"),
    ("h200-1", "H200-141G"),
    ("h100-0", "H100-80G"),
    ("h100-1", "H100-80G"),
    ("l20-0", "L20-48G"),
    ("l20-1", "L20-48G"),
    ("rtx-0", "RTX4090-24G"),
]
worlds = st.tuples(
    st.lists(st.sampled_from([0, 0, 0, 2, 8]), min_size=len(WORLD_NODES), max_size=len(WORLD_NODES)),
    st.lists(
        st.tuples(
            st.sampled_from(MODELS),
            st.lists(st.integers(0, len(WORLD_NODES) - 1), min_size=1, max_size=3),  # a node per replica
            st.sampled_from(list(RebalanceConsent)),
            st.booleans(),
        ),
        min_size=3,
        max_size=14,
    ),
    st.integers(1, 4),
    st.sampled_from([R1, LLAMA70]),
)


def _world(spec: tuple[Any, ...]) -> tuple[Pool, list[ResidentDeployment], int, ReplicaRequest]:
    """A pool fragmented by DSDs whose replicas sit on arbitrary nodes, and a replica that may not fit."""
    from dspool.placement import feasible_types

    foreign, deployments, max_moves, waiting_model = spec
    pool = pool_of(
        *(node(name, acc, used=used, fabric="f") for (name, acc), used in zip(WORLD_NODES, foreign, strict=True))
    )
    residents = []
    for index, (model, where, consent, budget) in enumerate(deployments):
        key = f"ai/d{index}"
        placements = []
        for replica, position in enumerate(where):
            target = pool.nodes[WORLD_NODES[position][0]]
            request = ReplicaRequest(deployment=key, replica=replica, model=CATALOG.model(model))
            shape = next(
                (t.plan for t in feasible_types(pool, request, CATALOG) if t.accelerator == target.accelerator), None
            )
            if shape is None or shape.pipeline_parallel > 1 or target.free < shape.tensor_parallel:
                continue
            placement = held(target.accelerator, replica, (target.name, shape.tensor_parallel))
            reserve(pool, key, placement)
            placements.append(placement)
        spec_ = DeepSeekDeploymentSpec(model=model, replicas=len(where), placement=PlacementSpec(rebalance=consent))
        residents.append(
            ResidentDeployment(
                deployment=key, spec=spec_, placements=placements, disruptions_allowed=1 if budget else None
            )
        )
    waiting = ReplicaRequest(deployment="ai/waiting", replica=0, model=CATALOG.model(waiting_model))
    return pool, residents, max_moves, waiting


def _check_plan(pool: Pool, plan: RebalancePlan, residents: list[ResidentDeployment], max_moves: int) -> None:
    by_key = {r.deployment: r for r in residents}
    assert 0 < len(plan.moves) <= max_moves
    for move in plan.moves:
        owner = by_key[move.deployment]
        assert move.deployment != plan.deployment
        assert owner.consent == RebalanceConsent.ALLOWED
        assert move.source in owner.placements
        assert move.destination.replica not in {p.replica for p in owner.placements}
        assert not {n.name for n in move.destination.nodes} & {n.name for n in move.source.nodes}
    for key in {m.deployment for m in plan.moves}:
        allowed = by_key[key].disruptions_allowed
        assert allowed is None or sum(m.deployment == key for m in plan.moves) <= allowed
    # execute it make-before-break: every destination fits beside the old copies, then the waiting replica fits
    book_destinations(pool, plan)
    assert all(n.used + n.reserved <= n.allocatable for n in pool.nodes.values())
    for move in plan.moves:
        release_source(pool, move)
    reserve(pool, plan.deployment, plan.waiting)
    assert all(n.used + n.reserved <= n.allocatable for n in pool.nodes.values())


@settings(max_examples=250, deadline=None)
@given(world=worlds)
def test_every_plan_is_complete_consented_and_never_double_books(world: tuple[Any, ...]) -> None:
    pool, residents, max_moves, waiting = _world(world)
    before = pool.model_dump()
    outcome = plan_rebalance(pool, waiting, residents, CATALOG, RebalancePolicy(max_moves=max_moves))
    assert pool.model_dump() == before
    assert outcome.reason
    if outcome.plan is not None:
        _check_plan(pool, outcome.plan, residents, max_moves)


# ------------------------------------------------------------------------------------- the state machine

POLICY = RebalancePolicy(ready_timeout_seconds=600)


def test_the_happy_path_one_pass_at_a_time() -> None:
    state = MoveState.PLANNED
    script = [
        (MoveFacts(), MoveState.PLANNED, MoveAction.RESERVE_DESTINATION),
        (MoveFacts(destination_reserved=True), MoveState.DESTINATION_RESERVED, MoveAction.CREATE_NEW_REPLICA),
        (
            MoveFacts(destination_reserved=True, new_replica_created=True),
            MoveState.NEW_REPLICA_STARTING,
            MoveAction.WAIT,
        ),
        (
            MoveFacts(destination_reserved=True, new_replica_created=True, new_replica_ready=True),
            MoveState.NEW_REPLICA_READY,
            MoveAction.REMOVE_OLD_REPLICA,
        ),
        (
            MoveFacts(new_replica_created=True, new_replica_ready=True, old_replica_removed=True),
            MoveState.OLD_REMOVED,
            MoveAction.WAIT,
        ),
        (
            MoveFacts(new_replica_ready=True, old_replica_removed=True, old_replica_gone=True),
            MoveState.DONE,
            MoveAction.NOTHING,
        ),
    ]
    for facts, expected_state, expected_action in script:
        step = next_move_step(state, facts, POLICY)
        assert (step.state, step.action) == (expected_state, expected_action), step.reason
        state = step.state


def test_everything_observed_at_once_goes_as_far_as_it_can() -> None:
    facts = MoveFacts(destination_reserved=True, new_replica_created=True, new_replica_ready=True)
    step = next_move_step(MoveState.PLANNED, facts, POLICY)
    assert (step.state, step.action) == (MoveState.NEW_REPLICA_READY, MoveAction.REMOVE_OLD_REPLICA)


def test_a_copy_not_ready_in_time_rolls_back_and_the_old_replica_stays() -> None:
    facts = MoveFacts(destination_reserved=True, new_replica_created=True, seconds_since_start=601)
    step = next_move_step(MoveState.NEW_REPLICA_STARTING, facts, POLICY)
    assert (step.state, step.action) == (MoveState.ROLLED_BACK, MoveAction.ROLL_BACK)
    assert "not Ready after 600s" in step.reason
    assert plan_progress([MoveState.DONE, MoveState.ROLLED_BACK]) == PlanProgress.ABANDONED
    assert plan_progress([MoveState.DONE, MoveState.DONE]) == PlanProgress.COMPLETE
    assert plan_progress([MoveState.DONE, MoveState.NEW_REPLICA_STARTING]) == PlanProgress.IN_FLIGHT


def test_a_copy_that_stops_being_ready_keeps_the_old_replica() -> None:
    facts = MoveFacts(destination_reserved=True, new_replica_created=True, new_replica_ready=False)
    step = next_move_step(MoveState.NEW_REPLICA_READY, facts, POLICY)
    assert (step.state, step.action) == (MoveState.NEW_REPLICA_STARTING, MoveAction.WAIT)


observations = st.lists(st.tuples(st.booleans(), st.floats(0, 200)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(observed=observations)
def test_a_dsd_never_has_fewer_ready_replicas_during_a_move(observed: list[tuple[bool, float]]) -> None:
    """Drive one move the way the operator does, with the new copy's readiness flapping at random."""
    state = MoveState.PLANNED
    old_present = True  # the old copy serves until the operator removes it
    destination_booked = False
    elapsed = 0.0
    for new_ready, seconds in observed:
        elapsed += seconds
        facts = MoveFacts(
            destination_reserved=destination_booked,
            new_replica_created=destination_booked,
            new_replica_ready=destination_booked and new_ready,
            old_replica_removed=not old_present,
            old_replica_gone=not old_present,
            seconds_since_start=elapsed,
        )
        step = next_move_step(state, facts, POLICY)
        if step.action == MoveAction.RESERVE_DESTINATION:
            destination_booked = True
        elif step.action == MoveAction.REMOVE_OLD_REPLICA:
            assert facts.new_replica_ready  # only ever asked while the new copy serves
            old_present = False
            # the moment the move takes a Ready replica away, another one of that DSD serves: its Ready
            # count never drops below what it was before the move (a new copy failing later is an
            # ordinary replica failure, not the move's doing)
            assert int(old_present) + int(facts.new_replica_ready) >= 1
        elif step.action == MoveAction.ROLL_BACK:
            destination_booked = False
        state = step.state
        # a step names the state before its action is carried out: removing the old copy or rolling back
        # ends what that state held
        if state in HOLDS_DESTINATION and step.action != MoveAction.ROLL_BACK:
            assert destination_booked  # the destination stays booked while the move is in flight
        if state in HOLDS_SOURCE and step.action != MoveAction.REMOVE_OLD_REPLICA:
            assert old_present
        if state == MoveState.ROLLED_BACK:
            assert old_present and not destination_booked


def test_consent_defaults_to_allowed_and_a_move_round_trips_through_status() -> None:
    from dspool.api import DeepSeekDeploymentStatus

    spec = DeepSeekDeploymentSpec.model_validate({"model": R1, "placement": {"rebalance": "Never"}})
    assert spec.placement.rebalance == RebalanceConsent.NEVER
    assert DeepSeekDeploymentSpec(model=R1).placement.rebalance == RebalanceConsent.ALLOWED
    pool = h100_pool()
    plan = plan_rebalance(pool, r1_request(**ONLY_H100), h100_residents(pool), CATALOG).plan
    assert plan is not None
    status = DeepSeekDeploymentStatus(moves=[plan.moves[0].record(plan.for_replica)])
    assert DeepSeekDeploymentStatus.model_validate(status.wire()) == status


def test_a_new_copy_whose_weights_must_be_fetched_gets_a_longer_timeout_and_one_on_a_warm_node_does_not() -> None:
    pool = h100_pool()
    residents = h100_residents(pool)
    plan = plan_rebalance(pool, r1_request(**ONLY_H100), residents, CATALOG).plan
    assert plan is not None
    specs = {r.deployment: r.spec for r in residents}

    def entry_of(move: PlannedMove) -> CacheEntry | None:
        spec = specs[move.deployment]
        return entry_for(spec, CATALOG.model(spec.model), Precision(move.destination.precision))

    policy = RebalancePolicy()
    cold = plan_ready_timeout(plan, entry_of, CacheView(), Bandwidth(), policy)
    assert cold > policy.ready_timeout_seconds  # a 70B checkpoint fetched at 200 MB/s takes longer than 900 s
    warm_view = CacheView(nodes={
        n.name: NodeModelCache(node=n.name, capacity_bytes=1, entries={
            e.id: NodeEntry(entry=e.id, state=EntryState.READY, size_bytes=e.size_bytes)
            for m in plan.moves if (e := entry_of(m)) is not None
        })
        for m in plan.moves for n in m.destination.nodes
    })  # fmt: skip
    warm = plan_ready_timeout(plan, entry_of, warm_view, Bandwidth(), policy)
    assert warm == policy.ready_timeout_seconds  # only the load from local disk: the policy's floor holds

    started = start_plan(pool, plan, "2026-12-05T00:00:00Z", cold)
    record = started[0].record
    assert record.ready_timeout_seconds == cold
    placements = {record.new_replica: started[0].destination, record.replica: plan.moves[0].source}
    seen = MoveObservation(
        new_copy_ready=False, old_pods_gone=False, seconds_since_start=policy.ready_timeout_seconds + 60
    )
    waiting = advance_move(started[0].deployment, record.model_copy(update={"state": MoveState.NEW_REPLICA_STARTING}),
                           placements, pool, seen, policy)  # fmt: skip
    assert waiting.move.state == MoveState.NEW_REPLICA_STARTING  # past 900 s, still within its own timeout
