"""Weights benchmark: time-to-ready with node model caches, side by side, on the churn traces of bench/churn.py.

Each seed's trace (``churn.draw_trace``: the DeepSeek mix, offered load 1.0) is played with
``dspool.sim.simulate`` (dspool binpack, the operator's own placement and move executor) four ways, the
caches empty at the start, the origin at 200 MB/s per node and 1 GB/s for the pool, local NVMe at 2 GB/s:

- cache-aware + prefetch: node caches, placement prefers warm nodes, each entry kept on ``--warm-nodes``
  more nodes than its replicas use;
- cache-aware: the same without prefetch;
- cache-blind: node caches, but placement ignores them (where a replica lands is today's rule);
- no cache: every replica fetches its own copy from the origin (today's behaviour).

Goals (issue 20): cache-aware + prefetch against cache-blind: mean time-to-ready of 671B replicas at least 3x
lower, bytes from the origin at least 2x lower, acceptance within one point.

    python bench/weights.py            # 2 pools x 5 seeds x 1,500 arrivals
    python bench/weights.py --quick    # 1 pool x 2 seeds x 500 arrivals
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from churn import BIG_MODEL, ROOT, big_acceptance, draw_trace, mixed_28
from dspool.catalog import builtin_catalog
from dspool.sim.inputs import load_pool_file
from dspool.sim.simulate import SimulationReport, SimulationSettings, pool_from_file, simulate
from dspool.weights.estimate import Bandwidth

TIB = 1024**4
BANDWIDTH = Bandwidth(origin_gbps=1.6, origin_total_gbps=8.0, disk_gbps=16.0)  # 200 MB/s, 1 GB/s, 2 GB/s


@dataclass
class Row:
    """One variant over the seeds of one pool."""

    big_mean: list[float] = field(default_factory=list)
    big_p95: list[float] = field(default_factory=list)
    big_never: list[float] = field(default_factory=list)
    origin: list[float] = field(default_factory=list)
    hits: list[float] = field(default_factory=list)
    acceptance: list[float] = field(default_factory=list)
    big_accept: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, report: SimulationReport) -> None:
        ready = report.time_to_ready_seconds
        assert ready is not None
        big = ready.per_model.get(BIG_MODEL)
        self.big_mean.append(big.mean if big else 0.0)
        self.big_p95.append(big.p95 if big else 0.0)
        self.big_never.append(big.never_ready if big else 0)
        self.origin.append((report.origin_bytes or 0) / TIB)
        self.hits.append(report.cache_hit_ratio or 0.0)
        self.acceptance.append(report.acceptance)
        self.big_accept.append(big_acceptance(report))


def variants(warm_nodes: int) -> list[tuple[str, SimulationSettings]]:
    """The four ways of serving weights, all else equal."""
    base = SimulationSettings(bandwidth=BANDWIDTH)
    return [
        (f"aware + prefetch {warm_nodes}", base.model_copy(update={"model_cache": True, "warm_nodes": warm_nodes})),
        ("aware", base.model_copy(update={"model_cache": True})),
        ("blind", base.model_copy(update={"model_cache": True, "cache_aware": False})),
        ("no cache", base.model_copy(update={"model_cache": False})),
    ]


def minutes(values: Sequence[float]) -> str:
    mean = statistics.fmean(values) / 60
    spread = statistics.pstdev(values) / 60 if len(values) > 1 else 0.0
    return f"{mean:.1f} ±{spread:.1f}"


def share(values: Sequence[float]) -> str:
    spread = statistics.pstdev(values) * 100 if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1%} ±{spread:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Play every variant on every pool and seed; print the table and the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 pool, 2 seeds, 500 arrivals")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--arrivals", type=int, default=1500)
    parser.add_argument("--warm-nodes", type=int, default=1)
    args = parser.parse_args(argv)
    catalog = builtin_catalog()
    pools = [mixed_28(), load_pool_file(ROOT / "examples" / "pools" / "enterprise-mixed.yaml", catalog)]
    seeds, arrivals = args.seeds, args.arrivals
    if args.quick:
        pools, seeds, arrivals = pools[:1], 2, 500
    started = time.perf_counter()
    print(
        f"weights: churn traces, {arrivals} arrivals per seed, {seeds} seeds; origin {BANDWIDTH.origin_gbps} Gbit/s "
        f"per node, {BANDWIDTH.origin_total_gbps} Gbit/s pool-wide, disk {BANDWIDTH.disk_gbps} Gbit/s; caches "
        f"start empty; dspool binpack"
    )
    for pool_file in pools:
        base = pool_from_file(pool_file, catalog)
        print(f"\npool {pool_file.name}: {len(base.nodes)} nodes; mean ± std over seeds")
        traces = [draw_trace(base, catalog, arrivals, seed) for seed in range(1, seeds + 1)]
        rows: dict[str, Row] = {}
        for name, settings in variants(args.warm_nodes):
            row = rows[name] = Row()
            for trace in traces:
                tick = time.perf_counter()
                row.add(simulate(pool_from_file(pool_file, catalog), trace, catalog, settings))
                row.seconds += time.perf_counter() - tick
        print(
            f"{'variant':19} {'671B TTR mean min':>18} {'671B TTR p95 min':>17} {'never ready':>12} {'origin TiB':>11} "
            f"{'cache hits':>11} {'acceptance':>12} {'671B accept.':>13} {'run s':>6}"
        )
        for name, row in rows.items():
            origin = f"{statistics.fmean(row.origin):.1f}"
            never = f"{statistics.fmean(row.big_never):.1f}"
            print(
                f"{name:19} {minutes(row.big_mean):>18} {minutes(row.big_p95):>17} {never:>12} {origin:>11} "
                f"{share(row.hits):>11} {share(row.acceptance):>12} {share(row.big_accept):>13} {row.seconds:>6.1f}"
            )
        ours = rows[f"aware + prefetch {args.warm_nodes}"]
        for against in ("blind", "no cache"):
            other = rows[against]
            faster = statistics.fmean(other.big_mean) / max(statistics.fmean(ours.big_mean), 1e-9)
            fewer = statistics.fmean(other.origin) / max(statistics.fmean(ours.origin), 1e-9)
            points = (statistics.fmean(ours.acceptance) - statistics.fmean(other.acceptance)) * 100
            print(
                f"goals (aware + prefetch vs {against}): 671B mean time-to-ready {faster:.1f}x lower (goal >= 3), "
                f"origin bytes {fewer:.1f}x lower (goal >= 2), acceptance {points:+.1f} points (goal within 1)"
            )
    print(f"\n(python {sys.version.split()[0]}, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
