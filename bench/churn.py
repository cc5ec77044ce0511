"""Churn benchmark: placement policies under arrivals and departures of the DeepSeek mix, side by side.

Each seed draws a trace (Poisson arrivals, exponential lifetimes, offered load near 1.0) and plays it with
``dspool.sim.simulate`` on mixed pools, once per policy:

- first-fit: the first node (in name order) with room, any type;
- best-fit: the node (or gang) left with the fewest free devices, any type;
- type-aware best-fit: the smallest adequate type (least device memory claimed) with room, best fit in it;
- FGD (USENIX ATC'23): the node whose expected fragmentation for the arrival mix grows least;
- re-pack-everything: dspool's placement; on a miss, everything live plus the newcomer is packed again from
  scratch by the same rules, largest first, and every replica whose nodes changed counts as a move
  (instant, unlimited: an upper bound of what migrations can buy, at their price);
- dspool binpack: ``placement.place_replica`` (scarce-shape scoring, demand mix = the trace's models);
- dspool + rebalancing: the same, plus ``rebalance.plan_rebalance`` on a miss (default policy: at most 4
  moves per plan, 4 in flight, 300 s cooldown per DSD).

The baselines (not product code) use dspool's sizing for each model on each type, so every policy sees the
same replica shapes; they differ only in where a replica goes. Then the same traces are served by static
partitions (each model gets a fixed set of nodes sized to its share of the device demand, the way teams
split clusters) and by the pooled engine (dspool binpack): replicas served and devices idle.

    python bench/churn.py            # 2 pools x 5 seeds x 1,500 arrivals (a few minutes on 2 cores)
    python bench/churn.py --quick    # 1 pool x 2 seeds x 500 arrivals
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dspool.api import DeepSeekDeploymentSpec, PlacementSpec, ReplicaPlacement
from dspool.catalog import Catalog, builtin_catalog
from dspool.inventory import NodeState, Pool
from dspool.placement import (
    ReplicaRequest,
    TypeCandidate,
    feasible_types,
    place_replica,
    placement_from_plan,
    reserve,
)
from dspool.rebalance import PlannedMove, RebalancePlan, RebalancePolicy, ResidentDeployment
from dspool.sim.fleet import NodeGroup, PoolFile
from dspool.sim.inputs import TraceEntry, dump_trace, load_pool_file
from dspool.sim.simulate import Placer, SimulationReport, SimulationSettings, pool_from_file, simulate

ROOT = Path(__file__).resolve().parents[1]
BIG_MODEL = "deepseek-r1"
PARTITION_LABEL = "dspool.io/partition"

# Arrival shares of the DeepSeek mix (a DSD per arrival) and replicas per DSD.
ARRIVAL_MIX: list[tuple[str, float]] = [
    ("deepseek-r1", 0.08),
    ("deepseek-r1-distill-llama-70b", 0.12),
    ("deepseek-r1-distill-qwen-32b", 0.15),
    ("deepseek-r1-distill-qwen-14b", 0.20),
    ("deepseek-r1-distill-llama-8b", 0.10),
    ("deepseek-r1-distill-qwen-7b", 0.10),
    ("deepseek-r1-distill-qwen-1.5b", 0.25),
]
REPLICA_CHOICES = [(1, 0.75), (2, 0.25)]  # distills; R1 always 1
MEAN_INTERARRIVAL_S = 60.0
OFFERED_LOAD = 1.0


def mixed_28() -> PoolFile:
    """28 nodes of six accelerator types on three fabrics (the field's churn setup)."""
    groups = [
        ("h200", 4, "H200-141G", "rack-a", None),
        ("h100", 6, "H100-80G", "rack-a", None),
        ("a100", 4, "A100-80G", "rack-b", None),
        ("l20", 6, "L20-48G", "rack-b", None),
        ("rtx4090", 4, "RTX4090-24G", "rack-c", 8),
        ("atlas800i-a2", 4, "Ascend910B3", "rack-c", 8),
    ]
    return PoolFile(
        name="mixed-28",
        groups=[
            NodeGroup(name=n, count=c, accelerator=a, devices_per_node=d, labels={"dspool.io/fabric": f})
            for n, c, a, f, d in groups
        ],
    )


# --------------------------------------------------------------------------------------------- traces


def nominal_memory(pool: Pool, catalog: Catalog) -> dict[str, float]:
    """Device memory (GiB) one replica of each model claims at its smallest adequate home in the pool."""
    result = {}
    for model_id, _ in ARRIVAL_MIX:
        request = ReplicaRequest(deployment="x/y", replica=0, model=catalog.model(model_id))
        result[model_id] = min(o.memory_claimed for o in feasible_types(pool, request, catalog))
    return result


def replicas_per_arrival(model: str) -> float:
    """Mean replicas of one DSD of ``model``."""
    return 1.0 if model == BIG_MODEL else sum(r * w for r, w in REPLICA_CHOICES)


def draw_trace(pool: Pool, catalog: Catalog, arrivals: int, seed: int, load: float = OFFERED_LOAD) -> list[TraceEntry]:
    """Poisson arrivals and exponential lifetimes; offered load = the mix's device memory at each model's
    smallest adequate home x arrival rate x mean lifetime / the pool's device memory."""
    rng = random.Random(seed)
    memory = nominal_memory(pool, catalog)
    names = [m for m, _ in ARRIVAL_MIX]
    weights = [w for _, w in ARRIVAL_MIX]
    per_arrival = sum(w * memory[m] * replicas_per_arrival(m) for m, w in ARRIVAL_MIX)
    capacity = sum(n.allocatable * n.device_memory_gib for n in pool.nodes.values())
    mean_lifetime = load * capacity * MEAN_INTERARRIVAL_S / per_arrival
    entries = []
    at = 0.0
    for index in range(arrivals):
        at += rng.expovariate(1 / MEAN_INTERARRIVAL_S)
        model = rng.choices(names, weights)[0]
        replicas = 1
        if model != BIG_MODEL:
            replicas = rng.choices([r for r, _ in REPLICA_CHOICES], [w for _, w in REPLICA_CHOICES])[0]
        entries.append(
            TraceEntry(
                at=round(at, 1),
                lifetime=round(rng.expovariate(1 / mean_lifetime) + 1.0, 1),
                name=f"{short(model)}-{index}",
                spec=DeepSeekDeploymentSpec(model=model, replicas=replicas),
            )
        )
    return entries


# ----------------------------------------------------------------------------------- baseline policies


def _node_sets(option: TypeCandidate, pick: str) -> list[list[NodeState]]:
    """Node sets of one type with room for one replica: every fitting node, or one gang per fabric domain
    (its ``pick``: 'first' nodes by name or 'best' = fewest free)."""
    tp, pp = option.plan.tensor_parallel, option.plan.pipeline_parallel
    if pp == 1:
        return [[n] for n in option.nodes if n.free >= tp]
    sets = []
    for _, nodes in option.domains:
        fitting = [n for n in nodes if n.free >= tp]
        if len(fitting) >= pp:
            ordered = fitting if pick == "first" else sorted(fitting, key=lambda n: (n.free, n.name))
            sets.append(sorted(ordered[:pp], key=lambda n: n.name))
    return sets


def _leftover(nodes: Sequence[NodeState], tp: int) -> int:
    return sum(n.free - tp for n in nodes)


class RulePlacer:
    """A classic placement rule; ``make_room`` re-packs everything when ``repack`` is set."""

    def __init__(self, catalog: Catalog, rule: str, repack: bool = False) -> None:
        self.catalog = catalog
        self.rule = rule
        self.repack = repack
        self.popularity = {m: w for m, w in ARRIVAL_MIX}
        self._needs_pool: Pool | None = None
        self._needs_by_type: dict[str, list[tuple[int | None, float]]] = {}

    def _choose(self, pool: Pool, request: ReplicaRequest) -> tuple[TypeCandidate, list[NodeState]] | None:
        options = feasible_types(pool, request, self.catalog)
        if self.rule == "dspool":
            placement = place_replica(pool, request, self.catalog).placement
            if placement is None:
                return None
            option = next(o for o in options if o.accelerator == placement.accelerator)
            return option, [pool.nodes[n.name] for n in placement.nodes]
        if self.rule == "first-fit":
            options = sorted(options, key=lambda o: o.nodes[0].name)
            for option in options:
                sets = _node_sets(option, "first")
                if sets:
                    return option, min(sets, key=lambda s: [n.name for n in s])
            return None
        if self.rule == "type-aware":
            for option in sorted(options, key=lambda o: (round(o.memory_claimed, 3), o.accelerator)):
                sets = _node_sets(option, "best")
                if sets:
                    return option, min(
                        sets, key=lambda s: (_leftover(s, option.plan.tensor_parallel), [n.name for n in s])
                    )
            return None
        scored = []
        for option in options:
            for nodes in _node_sets(option, "best"):
                tp = option.plan.tensor_parallel
                score = self._fgd_delta(pool, option, nodes) if self.rule == "fgd" else 0.0
                scored.append(((round(score, 9), _leftover(nodes, tp), [n.name for n in nodes]), option, nodes))
        if not scored:
            return None
        _, option, nodes = min(scored, key=lambda item: item[0])
        return option, nodes

    def _fgd_delta(self, pool: Pool, option: TypeCandidate, nodes: Sequence[NodeState]) -> float:
        """Growth of the expected fragmentation (FGD): per node, the free devices each model of the mix could
        not use there (all of them when it needs more per node than is free, or cannot run on the type),
        weighted by the model's popularity; after minus before."""
        needs = self._needs(pool, option.accelerator)
        tp = option.plan.tensor_parallel

        def fragmented(free: int) -> float:
            return sum(p * free for need, p in needs if need is None or need > free)

        return sum(fragmented(n.free - tp) - fragmented(n.free) for n in nodes)

    def _needs(self, pool: Pool, accelerator: str) -> list[tuple[int | None, float]]:
        """Per model of the mix, its TP on the type (None when it does not fit there) and its popularity;
        kept per pool and type (they depend on the node set only, fixed during a simulation)."""
        if self._needs_pool is not pool:
            self._needs_pool, self._needs_by_type = pool, {}
        found = self._needs_by_type.get(accelerator)
        if found is None:
            found = []
            for model_id, popularity in self.popularity.items():
                request = ReplicaRequest(deployment="x/y", replica=0, model=self.catalog.model(model_id))
                on_type = [o for o in feasible_types(pool, request, self.catalog) if o.accelerator == accelerator]
                found.append((on_type[0].plan.tensor_parallel if on_type else None, popularity))
            self._needs_by_type[accelerator] = found
        return found

    def place(self, pool: Pool, request: ReplicaRequest, peers: Sequence[ReplicaPlacement]) -> ReplicaPlacement | None:
        """The rule's choice, or None."""
        chosen = self._choose(pool, request)
        return placement_from_plan(chosen[0].plan, [n.name for n in chosen[1]], request.replica) if chosen else None

    def make_room(
        self,
        pool: Pool,
        request: ReplicaRequest,
        residents: Sequence[ResidentDeployment],
        now: float,
        in_flight: int,
        peers: Sequence[ReplicaPlacement],
    ) -> RebalancePlan | None:
        """Re-pack every live replica and the newcomer on an empty copy of the pool, largest first."""
        if not self.repack:
            return None
        scratch = Pool(nodes={name: n.model_copy(update={"used": 0, "reserved": 0}) for name, n in pool.nodes.items()})
        items: list[tuple[int, str, ReplicaRequest, ReplicaPlacement | None]] = [
            (self._size(pool, request), request.deployment, request, None)
        ]
        for resident in residents:
            namespace, _, name = resident.deployment.partition("/")
            for placement in resident.placements:
                replica_request = ReplicaRequest.from_spec(
                    namespace, name, placement.replica, resident.spec, self.catalog
                )
                items.append((placement.devices, resident.deployment, replica_request, placement))
        items.sort(key=lambda i: (-i[0], i[1], i[2].replica))
        moves: list[PlannedMove] = []
        waiting: ReplicaPlacement | None = None
        for _, deployment, replica_request, old in items:
            new = self.place(scratch, replica_request, ())
            if new is None:
                return None
            reserve(scratch, deployment, new)
            if old is None:
                waiting = new
            elif [(n.name, n.devices) for n in old.nodes] != [(n.name, n.devices) for n in new.nodes]:
                moves.append(
                    PlannedMove(
                        deployment=deployment,
                        model=replica_request.model.id,
                        source=old,
                        destination=new,
                        reason="re-pack",
                    )
                )
        assert waiting is not None
        return RebalancePlan(
            deployment=request.deployment,
            replica=request.replica,
            model=request.model.id,
            waiting=waiting,
            moves=moves,
            devices_freed=sum(m.devices for m in moves),
            reason="re-pack",
        )

    def _size(self, pool: Pool, request: ReplicaRequest) -> int:
        options = feasible_types(pool, request, self.catalog)
        return min((o.plan.devices_per_replica for o in options), default=0)


# ------------------------------------------------------------------------------------------ partitions


def static_partitions(pool_file: PoolFile, pool: Pool, catalog: Catalog) -> tuple[PoolFile, dict[str, int]]:
    """The pool file with every node labelled for one model, nodes split by each model's device demand.

    Largest remainder, one unit at a time: the model furthest below its share of the demand gets a unit of
    its best type still unassigned (a whole node; a gang's worth of nodes in one fabric for a multi-node
    shape). Returns the labelled pool file and the nodes per model.
    """
    memory = nominal_memory(pool, catalog)
    demand = {m: w * memory[m] * replicas_per_arrival(m) for m, w in ARRIVAL_MIX}
    total_demand = sum(demand.values())
    capacity = sum(n.allocatable * n.device_memory_gib for n in pool.nodes.values())
    target = {m: d / total_demand * capacity for m, d in demand.items()}
    options = {
        m: feasible_types(pool, ReplicaRequest(deployment="x/y", replica=0, model=catalog.model(m)), catalog)
        for m in demand
    }
    free_nodes = {name: node for name, node in sorted(pool.nodes.items())}
    owner: dict[str, str] = {}
    given = {m: 0.0 for m in demand}

    def unit(model: str) -> list[str] | None:
        for option in sorted(options[model], key=lambda o: (o.plan.pipeline_parallel, round(o.memory_claimed, 3))):
            pp = option.plan.pipeline_parallel
            for _, nodes in option.domains:
                spare = [n.name for n in nodes if n.name in free_nodes]
                if len(spare) >= pp:
                    return spare[:pp]
        return None

    while free_nodes:
        ranked = sorted(demand, key=lambda m: (given[m] / target[m], -target[m], m))
        for model in ranked:
            names = unit(model)
            if names is not None:
                for name in names:
                    owner[name] = model
                    node = free_nodes.pop(name)
                    given[model] += node.allocatable * node.device_memory_gib
                break
        else:
            break  # no model can use what is left: it stays idle
    groups = []
    for group in pool_file.groups:
        for index in range(group.count):
            name = f"{pool_file.name_prefix}{group.name}-{index:03d}"
            model = owner.get(name, "none")
            groups.append(
                group.model_copy(
                    update={
                        "name": f"{group.name}-{index:03d}p",
                        "count": 1,
                        "labels": {**group.labels, PARTITION_LABEL: model},
                    }
                )
            )
    counts: dict[str, int] = {}
    for model in owner.values():
        counts[model] = counts.get(model, 0) + 1
    return pool_file.model_copy(update={"groups": groups}), counts


def partitioned(trace: Sequence[TraceEntry]) -> list[TraceEntry]:
    """The same trace with every DSD pinned to its model's partition."""
    return [
        entry.model_copy(
            update={
                "spec": entry.spec.model_copy(
                    update={"placement": PlacementSpec(node_selector={PARTITION_LABEL: entry.spec.model})}
                )
            }
        )
        for entry in trace
    ]


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Row:
    """One policy's results over the seeds of one pool."""

    acceptance: list[float]
    big: list[float]
    allocation: list[float]
    moves: list[float]
    seconds: float


def big_acceptance(report: SimulationReport) -> float:
    counts = report.per_model.get(BIG_MODEL)
    return counts.placed / counts.requested if counts and counts.requested else 0.0


POLICIES: list[tuple[str, Callable[[Catalog], Placer | None], bool]] = [
    ("first-fit", lambda c: RulePlacer(c, "first-fit"), False),
    ("best-fit", lambda c: RulePlacer(c, "best-fit"), False),
    ("type-aware best-fit", lambda c: RulePlacer(c, "type-aware"), False),
    ("FGD", lambda c: RulePlacer(c, "fgd"), False),
    ("re-pack-everything", lambda c: RulePlacer(c, "dspool", repack=True), True),
    ("dspool binpack", lambda c: None, False),
    ("dspool + rebalancing", lambda c: None, True),
]


def short(model: str) -> str:
    """deepseek-r1-distill-qwen-7b -> qwen-7b; deepseek-r1 stays."""
    return model.removeprefix("deepseek-r1-distill-")


def mean_spread(values: Sequence[float], percent: bool = True) -> str:
    mean = statistics.fmean(values)
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1%} ±{spread * 100:.1f}" if percent else f"{mean:.2f} ±{spread:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every policy on every pool and seed; print the policy table and the partitions comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 pool, 2 seeds, 500 arrivals")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--arrivals", type=int, default=1500)
    parser.add_argument("--max-moves", type=int, default=RebalancePolicy().max_moves)
    parser.add_argument("--write-trace", metavar="FILE", help="write the enterprise-mixed trace of seed 1 and stop")
    args = parser.parse_args(argv)
    catalog = builtin_catalog()
    if args.write_trace:
        pool_file = load_pool_file(ROOT / "examples" / "pools" / "enterprise-mixed.yaml", catalog)
        trace = draw_trace(pool_from_file(pool_file, catalog), catalog, args.arrivals, 1)
        Path(args.write_trace).write_text(dump_trace(trace))
        print(f"wrote {len(trace)} arrivals to {args.write_trace}")
        return 0
    pools = [mixed_28(), load_pool_file(ROOT / "examples" / "pools" / "enterprise-mixed.yaml", catalog)]
    seeds, arrivals = args.seeds, args.arrivals
    if args.quick:
        pools, seeds, arrivals = pools[:1], 2, 500
    policy = RebalancePolicy(max_moves=args.max_moves)
    started = time.perf_counter()
    mix = ", ".join(f"{short(m)} {w:.0%}" for m, w in ARRIVAL_MIX)
    print(f"churn: {arrivals} arrivals per seed, {seeds} seeds, offered load {OFFERED_LOAD:.1f}, mix {mix}")
    for pool_file in pools:
        base = pool_from_file(pool_file, catalog)
        devices = sum(n.allocatable for n in base.nodes.values())
        print(
            f"\npool {pool_file.name}: {len(base.nodes)} nodes, {devices} devices, "
            f"{len({n.accelerator for n in base.nodes.values()})} types; mean ± std over seeds"
        )
        traces = [draw_trace(base, catalog, arrivals, seed) for seed in range(1, seeds + 1)]
        rows: dict[str, Row] = {}
        for name, make, rebalance in POLICIES:
            row = Row([], [], [], [], 0.0)
            for trace in traces:
                tick = time.perf_counter()
                settings = SimulationSettings(rebalance=rebalance, policy=policy)
                report = simulate(pool_from_file(pool_file, catalog), trace, catalog, settings, make(catalog))
                row.seconds += time.perf_counter() - tick
                row.acceptance.append(report.acceptance)
                row.big.append(big_acceptance(report))
                row.allocation.append(report.allocation)
                row.moves.append(report.moves_per_arrival)
            rows[name] = row
        print(
            f"{'policy':22} {'acceptance':>13} {'671B accept.':>13} {'allocation':>13} {'moves/arrival':>14} "
            f"{'run s':>6}"
        )
        for name, row in rows.items():
            print(
                f"{name:22} {mean_spread(row.acceptance):>13} {mean_spread(row.big):>13} "
                f"{mean_spread(row.allocation):>13} {mean_spread(row.moves, percent=False):>14} {row.seconds:>6.1f}"
            )
        reference, ours, rebalanced, repack = (
            rows["type-aware best-fit"],
            rows["dspool binpack"],
            rows["dspool + rebalancing"],
            rows["re-pack-everything"],
        )
        binpack_671b = (statistics.fmean(ours.big) - statistics.fmean(reference.big)) * 100
        binpack_all = (statistics.fmean(ours.acceptance) - statistics.fmean(reference.acceptance)) * 100
        rebalanced_671b = (statistics.fmean(rebalanced.big) - statistics.fmean(repack.big)) * 100
        print(
            f"goals: binpack 671B {binpack_671b:+.1f} points vs type-aware best-fit (goal >= +4), overall "
            f"{binpack_all:+.1f} points (goal >= 0); rebalancing 671B {rebalanced_671b:+.1f} points vs re-pack "
            f"(goal >= 0) at {statistics.fmean(rebalanced.moves):.2f} moves/arrival (goal <= 0.3)"
        )

        # static partitions versus the pooled engine, same traces
        labelled, counts = static_partitions(pool_file, base, catalog)
        variants: dict[str, list[SimulationReport]] = {
            "static partitions": [],
            "pooled": [],
            "pooled + rebalancing": [],
        }
        rebalancing = SimulationSettings(rebalance=True, policy=policy)
        for trace in traces:
            variants["static partitions"].append(
                simulate(pool_from_file(labelled, catalog), partitioned(trace), catalog)
            )
            variants["pooled"].append(simulate(pool_from_file(pool_file, catalog), trace, catalog))
            variants["pooled + rebalancing"].append(
                simulate(pool_from_file(pool_file, catalog), trace, catalog, rebalancing)
            )
        split = ", ".join(f"{short(m)} {n}" for m, n in sorted(counts.items()))
        print(f"static partitions (nodes per model: {split}) vs pooled (dspool binpack), same traces:")
        print(f"{'':22} {'replicas served':>16} {'671B accept.':>13} {'devices idle':>13}")
        for name, reports in variants.items():
            served = statistics.fmean(r.replicas_placed for r in reports)
            big = mean_spread([big_acceptance(r) for r in reports])
            print(f"{name:22} {served:>16.0f} {big:>13} {mean_spread([1 - r.allocation for r in reports]):>13}")
        static, pooled = variants["static partitions"], variants["pooled"]
        ratios = [p.allocation / s.allocation - 1 for p, s in zip(pooled, static, strict=True) if s.allocation]
        more = [p.replicas_placed / s.replicas_placed - 1 for p, s in zip(pooled, static, strict=True)]
        print(
            f"pooling: {mean_spread(ratios)} utilization (devices booked), {mean_spread(more)} replicas served "
            f"(utilization per seed: {', '.join(f'{r:+.0%}' for r in ratios)})"
        )
    print(f"\n(python {sys.version.split()[0]}, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
