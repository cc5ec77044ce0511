"""`dspool simulate`: input files, the engine on small traces, and invariants over random traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dspool.api import DeepSeekDeploymentSpec, PlacementSpec, RebalanceConsent, Strategy
from dspool.catalog import builtin_catalog
from dspool.cli import main
from dspool.rebalance import RebalancePolicy
from dspool.sim.fleet import NodeGroup, PoolFile
from dspool.sim.inputs import InputError, TraceEntry, dump_trace, load_pool_file, parse_trace
from dspool.sim.simulate import Simulation, SimulationSettings, pool_from_file, simulate
from dspool.weights.entries import GIB as GIB_BYTES
from dspool.weights.estimate import Bandwidth
from dspool.weights.state import EntryState

CATALOG = builtin_catalog()
ROOT = Path(__file__).resolve().parents[2]
R1 = "deepseek-r1"
SMALL = "deepseek-r1-distill-qwen-1.5b"
REPORT_KEYS = {
    "arrivals",
    "replicasRequested",
    "replicasPlaced",
    "acceptance",
    "perModel",
    "allocation",
    "moves",
    "movesPerArrival",
    "decisionSeconds",
}


def line(at: float, name: str, spec: dict[str, Any], lifetime: float = 100.0) -> str:
    return json.dumps({"at": at, "lifetime": lifetime, "name": name, "spec": spec})


# ------------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"at": 0,'], "t.jsonl:1: not valid JSON"),
        (
            ["# a comment", "", '{"at": 0, "name": "a", "spec": {"model": "deepseek-r1"}}'],
            "t.jsonl:3: lifetime: Field required",
        ),
        (
            [line(0, "a", {"model": R1, "replicas": -1})],
            "t.jsonl:1: spec.replicas: Input should be greater than or equal to 0",
        ),
        ([line(0, "a", {"model": "gpt-5"})], "t.jsonl:1: spec.model: unknown model 'gpt-5'"),
        (
            [line(0, "a", {"model": R1, "kvCacheTokens": 1})],
            "t.jsonl:1: spec.kvCacheTokens: Extra inputs are not permitted",
        ),
        (
            [line(10, "a", {"model": R1}), line(5, "b", {"model": R1})],
            "t.jsonl:2: at 5 is before the previous arrival (10); sort by at",
        ),
        ([line(0, "a", {"model": R1}), line(50, "a", {"model": R1})], "t.jsonl:2: name 'a' is still alive (line 1"),
        (["[1, 2]"], "t.jsonl:1: expected an object"),
        (
            [line(0, "a", {"model": R1, "precision": "fp16"})],
            "t.jsonl:1: spec.precision: Input should be one of 'auto', 'fp8', 'bf16', 'w8a8', 'w8a16'",
        ),
    ],
)
def test_a_bad_trace_line_is_named_with_its_number(lines: list[str], expected: str) -> None:
    with pytest.raises(InputError) as error:
        parse_trace(lines, "t.jsonl", CATALOG)
    assert str(error.value).startswith(expected), str(error.value)


def test_a_name_comes_back_once_its_dsd_has_left() -> None:
    entries = parse_trace([line(0, "a", {"model": R1}), line(100, "a", {"model": R1})], "t.jsonl", CATALOG)
    assert [e.name for e in entries] == ["a", "a"]
    assert parse_trace(dump_trace(entries).splitlines(), "again", CATALOG) == entries


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: p\ngroups:\n  - name: a\n    count: 1\n    accelerator: H900\n",
            "p.yaml:5: unknown accelerator 'H900'",
        ),
        (
            "name: p\ngroups:\n  - name: a\n    count: -1\n    accelerator: H200-141G\n",
            "p.yaml:4: groups.0.count: Input",
        ),
        ("name: p\ngroups: [\n", "p.yaml:3: not valid YAML"),
        ("name: p\ngroups: []\n", "p.yaml:2: the pool has no nodes"),
        ("- a\n", "p.yaml:1: a pool file is a mapping"),
    ],
)
def test_a_bad_pool_file_is_named_with_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_pool_file(path, CATALOG)
    assert str(error.value).replace(str(tmp_path) + "/", "").startswith(expected), str(error.value)


# ---------------------------------------------------------------------------------------------- the engine


def two_h200s() -> PoolFile:
    return PoolFile(name="t", groups=[NodeGroup(name="h200", count=2, accelerator="H200-141G")])


def pinned_small(consent: RebalanceConsent = RebalanceConsent.ALLOWED) -> DeepSeekDeploymentSpec:
    """Two 1.5B replicas spread over the H200s, one on each: no whole H200 is left for R1."""
    placement = PlacementSpec(strategy=Strategy.SPREAD, accelerator_types=["H200-141G"], rebalance=consent)
    return DeepSeekDeploymentSpec(model=SMALL, replicas=2, placement=placement)


def blocked_r1_trace(consent: RebalanceConsent = RebalanceConsent.ALLOWED) -> list[TraceEntry]:
    return [
        TraceEntry(at=0, lifetime=1000, name="small", spec=pinned_small(consent)),
        TraceEntry(at=10, lifetime=500, name="r1", spec=DeepSeekDeploymentSpec(model=R1)),
    ]


def run(trace: list[TraceEntry], **fields: Any) -> Any:
    return simulate(pool_from_file(two_h200s(), CATALOG), trace, CATALOG, SimulationSettings(**fields))


def test_r1_refused_without_rebalancing_is_placed_after_one_move_with_it() -> None:
    off = run(blocked_r1_trace())
    assert off.per_model[R1].placed == 0 and off.moves == 0
    assert off.refusal_examples[0].startswith("no room for deepseek-r1 replica 0: H200-141G needs 8 free on one node")
    on = run(blocked_r1_trace(), rebalance=True)
    assert on.per_model[R1].placed == 1 and on.per_model[SMALL].placed == 2
    assert (on.moves, on.rebalance_plans, on.devices_disrupted) == (1, 1, 1)
    assert on.plan_examples[0].startswith("to place r1#0 (8 x H200-141G on h200-00")
    assert on.plan_examples[0].endswith("; 1 move, 1 device disrupted")


def test_a_dsd_that_says_never_blocks_r1_even_with_rebalancing() -> None:
    report = run(blocked_r1_trace(RebalanceConsent.NEVER), rebalance=True)
    assert report.per_model[R1].placed == 0 and report.moves == 0
    assert "2 replicas of DSDs with rebalance: Never" in report.refusal_examples[0]


def test_a_slow_move_delays_the_waiting_replica_and_a_too_slow_one_rolls_back() -> None:
    slow = run(blocked_r1_trace(), rebalance=True, queue=True, move_seconds=60)
    assert slow.per_model[R1].placed == 1
    assert slow.waiting.replicas == 1 and slow.waiting.mean_seconds == 60
    never_ready = run(
        blocked_r1_trace(), rebalance=True, move_seconds=10_000, policy=RebalancePolicy(ready_timeout_seconds=100)
    )
    assert never_ready.per_model[R1].placed == 0 and never_ready.rolled_back == 1
    assert never_ready.per_model[SMALL].placed == 2  # the small replicas kept serving


def test_with_a_queue_a_refused_replica_waits_for_a_departure() -> None:
    trace = [
        TraceEntry(at=0, lifetime=300, name="a", spec=DeepSeekDeploymentSpec(model=R1, replicas=2)),
        TraceEntry(at=100, lifetime=300, name="b", spec=DeepSeekDeploymentSpec(model=R1)),
    ]
    lost = run(trace)
    assert (lost.replicas_placed, lost.acceptance) == (2, pytest.approx(2 / 3, abs=1e-4))
    queued = run(trace, queue=True)
    assert queued.replicas_placed == 3 and queued.waiting.mean_seconds == 200


def test_allocation_is_the_time_averaged_share_of_devices_booked() -> None:
    trace = [
        TraceEntry(at=0, lifetime=50, name="a", spec=DeepSeekDeploymentSpec(model=R1)),
        TraceEntry(at=100, lifetime=10, name="b", spec=DeepSeekDeploymentSpec(model=SMALL)),
    ]
    # one of two H200s booked for the first 50 of 100 seconds; the 1.5B arrives at the end of the window
    assert run(trace).allocation == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------ the command


def test_simulate_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    pool = ROOT / "examples" / "pools" / "enterprise-mixed.yaml"
    trace = ROOT / "examples" / "traces" / "enterprise-mixed-churn.jsonl"
    assert main(["simulate", "--pool", str(pool), "--trace", str(trace), "--rebalance", "on", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= REPORT_KEYS
    assert set(report["decisionSeconds"]) == {"p50", "p99"}
    assert report["arrivals"] == 300 and 0 < report["acceptance"] <= 1
    assert all(set(counts) >= {"requested", "placed"} for counts in report["perModel"].values())


def test_simulate_table_names_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    pool = ROOT / "examples" / "pools" / "small.yaml"
    trace = ROOT / "examples" / "traces" / "enterprise-mixed-churn.jsonl"
    assert main(["simulate", "--pool", str(pool), "--trace", str(trace), "--queue"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pool small: 3 nodes, 24 devices; trace: 300 arrivals")
    assert "deepseek-r1-distill-qwen-14b" in out and "waiting     " in out


def test_simulate_reports_a_bad_file_on_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(line(0, "a", {"model": R1}) + "\n" + '{"at": 1, "lifetime": 5, "name": "b"}\n')
    pool = ROOT / "examples" / "pools" / "small.yaml"
    assert main(["simulate", "--pool", str(pool), "--trace", str(trace)]) == 2
    err = capsys.readouterr().err
    assert err == f"dspool: error: {trace}:2: spec: Field required\n"
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--pool", str(pool), "--trace", str(trace), "--max-moves", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "dspool simulate: error: argument --max-moves: 0 must be at least 1\n"


# --------------------------------------------------------------------------------------------- properties

MIX = [R1, "deepseek-r1-distill-llama-70b", "deepseek-r1-distill-qwen-32b", "deepseek-r1-distill-qwen-14b", SMALL]
SMALL_POOL = PoolFile(
    name="prop",
    groups=[
        NodeGroup(name="h200", count=2, accelerator="H200-141G"),
        NodeGroup(name="h100", count=2, accelerator="H100-80G"),
        NodeGroup(name="l20", count=1, accelerator="L20-48G"),
        NodeGroup(name="rtx", count=1, accelerator="RTX4090-24G", devices_per_node=4),
    ],
)
arrivals = st.lists(
    st.tuples(
        st.floats(0, 50),  # gap to the previous arrival
        st.floats(1, 3000),  # lifetime
        st.sampled_from(MIX),
        st.integers(1, 3),
        st.sampled_from(list(RebalanceConsent)),
        st.sampled_from(list(Strategy)),
    ),
    min_size=1,
    max_size=25,
)


# Found by this test: an instant move gave its new copy the index of a queued replica of the same DSD.
MOVED_INTO_A_QUEUED_INDEX = [
    (0.0, 1.0, "deepseek-r1", 1, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1", 1, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1", 1, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 2.0, "deepseek-r1-distill-llama-70b", 2, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 2.0, "deepseek-r1-distill-llama-70b", 3, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1-distill-qwen-32b", 2, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1", 1, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1", 1, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1-distill-llama-70b", 1, RebalanceConsent.ALLOWED, Strategy.BINPACK),
    (0.0, 1.0, "deepseek-r1-distill-qwen-32b", 2, RebalanceConsent.ALLOWED, Strategy.BINPACK),
]


@settings(max_examples=60, deadline=None)
@example(trace_spec=MOVED_INTO_A_QUEUED_INDEX, move_seconds=0.0, queue=True, max_moves=1)
@given(
    trace_spec=arrivals,
    move_seconds=st.sampled_from([0.0, 30.0, 2000.0]),
    queue=st.booleans(),
    max_moves=st.integers(1, 4),
)
def test_no_device_booked_twice_no_victim_homeless_and_never_dsds_never_move(
    trace_spec: list[tuple[float, float, str, int, RebalanceConsent, Strategy]],
    move_seconds: float,
    queue: bool,
    max_moves: int,
) -> None:
    trace = []
    at = 0.0
    for index, (gap, lifetime, model, replicas, consent, strategy) in enumerate(trace_spec):
        at += gap
        placement = PlacementSpec(strategy=strategy, rebalance=consent)
        spec = DeepSeekDeploymentSpec(model=model, replicas=replicas, placement=placement)
        trace.append(TraceEntry(at=round(at, 3), lifetime=lifetime, name=f"d{index}", spec=spec))
    serving: dict[str, int] = {}  # DSD -> replicas it serves (placements minus new copies still in flight)
    never_placements: dict[str, list[Any]] = {}

    def check(sim: Simulation, now: float) -> None:
        booked: dict[str, int] = {}
        for deployment in sim.live.values():
            for placement in deployment.placements.values():
                for target in placement.nodes:
                    booked[target.name] = booked.get(target.name, 0) + target.devices
        for node in sim.pool.nodes.values():
            assert node.reserved == booked.get(node.name, 0)  # the pool books exactly what the DSDs hold
            assert node.used + node.reserved <= node.allocatable  # never a device booked twice
        for key in list(serving):
            if key not in sim.live:
                del serving[key]
        for key, deployment in sim.live.items():
            count = len(deployment.placements) - deployment.moves_in_flight
            assert count >= serving.get(key, 0)  # a moved replica is never left without a home
            serving[key] = count
            if deployment.spec.placement.rebalance == RebalanceConsent.NEVER:
                seen = never_placements.setdefault(key, [])
                assert all(p in deployment.placements.values() for p in seen)  # never moved
                seen.extend(p for p in deployment.placements.values() if p not in seen)

    policy = RebalancePolicy(max_moves=max_moves, ready_timeout_seconds=900, cooldown_seconds=0)
    settings_ = SimulationSettings(rebalance=True, queue=queue, move_seconds=move_seconds, policy=policy)
    sim = Simulation(pool_from_file(SMALL_POOL, CATALOG), trace, CATALOG, settings_, observer=check)
    report = sim.run()
    assert report.replicas_placed <= report.replicas_requested
    assert all(n.reserved == 0 for n in sim.pool.nodes.values())  # everything released at the end


# ------------------------------------------------------------------------------------------------ weights

R1_BYTES = 641 * GIB_BYTES
FETCH_R1 = R1_BYTES / 200e6  # 200 MB/s from the origin to one node
LOAD_R1 = R1_BYTES / 2e9  # 2 GB/s from local NVMe


def one_h200_r1s(count: int) -> list[TraceEntry]:
    """R1 DSDs one after another, each long after the previous one left."""
    return [
        TraceEntry(at=i * 10_000, lifetime=5_000, name=f"r1-{i}", spec=DeepSeekDeploymentSpec(model=R1))
        for i in range(count)
    ]


def test_time_to_ready_is_the_fetch_then_the_load_and_a_warm_node_only_loads() -> None:
    report = run(one_h200_r1s(2), model_cache=True)
    ready = report.time_to_ready_seconds
    assert ready is not None and ready.replicas == 2 and ready.never_ready == 0
    assert ready.per_model[R1].p95 == pytest.approx(FETCH_R1 + LOAD_R1, abs=1)  # the first fetches, cold
    assert ready.mean == pytest.approx(FETCH_R1 / 2 + LOAD_R1, abs=1)  # the second only loads
    assert report.origin_bytes == pytest.approx(R1_BYTES, rel=1e-6) and report.cache_hit_ratio == 0.5


def test_with_the_cache_off_every_placement_fetches_from_the_origin() -> None:
    report = run(one_h200_r1s(3), model_cache=False)
    assert report.replicas_placed == 3 and report.cache_hit_ratio == 0.0
    assert report.origin_bytes == pytest.approx(3 * R1_BYTES, rel=1e-6)
    assert report.time_to_ready_seconds is not None
    assert report.time_to_ready_seconds.mean == pytest.approx(FETCH_R1 + LOAD_R1, abs=1)


def test_the_pool_wide_cap_slows_fetches_that_share_it() -> None:
    trace = [TraceEntry(at=0, lifetime=50_000, name="r1", spec=DeepSeekDeploymentSpec(model=R1, replicas=2))]
    narrow = run(trace, model_cache=True, bandwidth=Bandwidth(origin_gbps=1.6, origin_total_gbps=1.6))
    assert narrow.time_to_ready_seconds is not None  # two nodes share 200 MB/s: both done at twice the time
    assert narrow.time_to_ready_seconds.mean == pytest.approx(2 * FETCH_R1 + LOAD_R1, abs=1)


def test_a_move_completes_only_once_its_new_copy_has_its_weights() -> None:
    report = run(blocked_r1_trace(), rebalance=True, queue=True, model_cache=True)
    assert report.per_model[R1].placed == 1 and report.moves == 1
    # the new copy goes to the other H200, still fetching the 1.5B's 3.3 GiB for the replica placed there at
    # 0 s; the move (started at 10 s, when R1 arrives) is Done once that fetch and the load are over
    small = 3.3 * GIB_BYTES
    assert report.waiting.mean_seconds == pytest.approx(small / 200e6 + small / 2e9 - 10, abs=0.1)


def test_without_model_cache_the_json_has_no_weights_keys(capsys: pytest.CaptureFixture[str]) -> None:
    pool = ROOT / "examples" / "pools" / "small.yaml"
    trace = ROOT / "examples" / "traces" / "enterprise-mixed-churn.jsonl"
    assert main(["simulate", "--pool", str(pool), "--trace", str(trace), "-o", "json"]) == 0
    assert not {"timeToReadySeconds", "originBytes", "cacheHitRatio"} & set(json.loads(capsys.readouterr().out))
    assert main(["simulate", "--pool", str(pool), "--trace", str(trace), "--model-cache", "on", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["timeToReadySeconds"]) >= {"mean", "p50", "p95", "perModel"}
    assert report["originBytes"] > 0 and 0 < report["cacheHitRatio"] < 1


TIGHT_CACHES = PoolFile(  # room for one R1 entry per node, or a few distills: eviction all the time
    name="tight",
    groups=[
        NodeGroup(name="h200", count=2, accelerator="H200-141G", model_cache_gib=700),
        NodeGroup(name="h100", count=2, accelerator="H100-80G", model_cache_gib=150),
        NodeGroup(name="l20", count=1, accelerator="L20-48G", model_cache_gib=100),
    ],
)


@settings(max_examples=40, deadline=None)
@given(trace_spec=arrivals, warm_nodes=st.integers(0, 2), aware=st.booleans())
def test_eviction_never_removes_an_entry_in_use_and_caches_stay_within_capacity(
    trace_spec: list[tuple[float, float, str, int, RebalanceConsent, Strategy]], warm_nodes: int, aware: bool
) -> None:
    trace = []
    at = 0.0
    for index, (gap, lifetime, model, replicas, _, strategy) in enumerate(trace_spec):
        at += gap * 100
        spec = DeepSeekDeploymentSpec(model=model, replicas=replicas, placement=PlacementSpec(strategy=strategy))
        trace.append(TraceEntry(at=round(at, 3), lifetime=lifetime * 10, name=f"d{index}", spec=spec))
    held_in_use: set[tuple[str, str]] = set()

    def check(sim: Simulation, now: float) -> None:
        assert sim.weights is not None
        for name, cache in sim.weights.view.nodes.items():
            assert cache.used_bytes <= cache.capacity_bytes
            for entry_id, entry in cache.entries.items():
                if entry.state == EntryState.READY and (name, entry_id) in sim.weights.in_use:
                    held_in_use.add((name, entry_id))
        for node_entry in list(held_in_use):
            if node_entry not in sim.weights.in_use:
                held_in_use.discard(node_entry)  # no longer used: it may go
                continue
            assert sim.weights.view.ready_on(*node_entry)  # still used: still there

    settings_ = SimulationSettings(model_cache=True, warm_nodes=warm_nodes, cache_aware=aware)
    sim = Simulation(pool_from_file(TIGHT_CACHES, CATALOG), trace, CATALOG, settings_, observer=check)
    report = sim.run()
    assert report.time_to_ready_seconds is not None
    assert report.time_to_ready_seconds.replicas + report.time_to_ready_seconds.never_ready == report.replicas_placed
