"""Metrics benchmark: series per family and scrape cost at 1,000 and 5,000 nodes with 200 DSDs.

The operator's ``/metrics`` is rebuilt from the last pass at every scrape, including the capacity
families (placeable replicas of every catalog model per type, stranded devices), so their cost is paid
per scrape. This builds the synthetic pools of ``bench/placement.py``, places 200 DeepSeekDeployments
of the request mix (1-4 replicas each) with the engine, gives every replica a serving pod, and then times
``generate_latest`` with per-node metrics on and off, side by side (ratios, since the machine is noisy).

    python bench/metrics.py            # 1,000 and 5,000 nodes
    python bench/metrics.py --quick    # 1,000 nodes
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dspool.api import DeepSeekDeploymentStatus, Phase
from dspool.catalog import builtin_catalog
from dspool.inventory import build_pool
from dspool.metrics import DeploymentSample, OperatorMetrics, PassSample
from dspool.placement import ReplicaRequest, place_replica, reserve
from placement import REQUEST_MIX, synthetic_cluster

DEPLOYMENTS = 200
SCRAPES = 5


def build_sample(node_count: int, node_metrics: bool, seed: int = 1) -> PassSample:
    """A pass's state on a synthetic pool: 200 DSDs placed by the engine, one pod per replica node."""
    catalog = builtin_catalog()
    rng = random.Random(seed)
    nodes, pods = synthetic_cluster(node_count, catalog, rng)
    pool = build_pool(nodes, pods, [], catalog)
    names = [model for model, _ in REQUEST_MIX]
    weights = [share for _, share in REQUEST_MIX]
    samples = []
    for index in range(DEPLOYMENTS):
        model = catalog.model(rng.choices(names, weights)[0])
        name = f"{model.id}-{index}"
        placements, serving = [], []
        for replica in range(rng.randint(1, 4)):
            request = ReplicaRequest(deployment=f"bench/{name}", replica=replica, model=model)
            decision = place_replica(pool, request, catalog)
            if decision.placement is None:
                continue
            reserve(pool, request.deployment, decision.placement)
            placements.append(decision.placement)
            for stage, node in enumerate(decision.placement.nodes):
                serving.append(
                    {"metadata": {"name": f"{name}-{replica}-{stage}", "namespace": "bench",
                                  "labels": {"dspool.io/replica": str(replica)}},
                     "spec": {"nodeName": node.name}}
                )  # fmt: skip
        status = DeepSeekDeploymentStatus(phase=Phase.READY, placements=placements, ready_replicas=len(placements))
        samples.append(DeploymentSample("bench", name, len(placements), status, serving))
    demand = list({catalog.model(name).id: catalog.model(name) for name in names}.values())
    return PassSample(pool, samples, 0.5, leader=True, catalog=catalog, demand=demand, node_metrics=node_metrics)


def series_per_family(text: str) -> Counter[str]:
    """Samples per family name in the exposition text (histogram buckets count)."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for suffix in ("_bucket", "_count", "_sum", "_created"):
                name = name.removesuffix(suffix)
            counts[name] += 1
    return counts


def measure(node_count: int, node_metrics: bool) -> tuple[Counter[str], float, int]:
    """(series per family, median scrape seconds, exposition bytes)."""
    metrics = OperatorMetrics()
    metrics.record_pass(build_sample(node_count, node_metrics), [0.0005] * 400)
    timings, text = [], b""
    for _ in range(SCRAPES):
        started = time.perf_counter()
        text = generate_latest(metrics.registry)
        timings.append(time.perf_counter() - started)
    return series_per_family(text.decode()), statistics.median(timings), len(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Print series per family and scrape time per pool size, node metrics on and off."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 nodes only")
    options = parser.parse_args(argv)
    sizes = [1000] if options.quick else [1000, 5000]
    results = {(n, on): measure(n, on) for n in sizes for on in (True, False)}
    families = sorted({family for counts, _, _ in results.values() for family in counts})
    header = ["family", *(f"{n} nodes{'' if on else ' (no node)'}" for n in sizes for on in (True, False))]
    print(f"series per family, {DEPLOYMENTS} DSDs")
    print("  ".join(f"{h:>22}" if i else f"{h:<42}" for i, h in enumerate(header)))
    for family in families:
        cells = [str(results[(n, on)][0].get(family, 0)) for n in sizes for on in (True, False)]
        print(f"{family:<42}" + "".join(f"  {c:>22}" for c in cells))
    totals = [str(sum(results[(n, on)][0].values())) for n in sizes for on in (True, False)]
    print(f"{'total':<42}" + "".join(f"  {t:>22}" for t in totals))
    print()
    base = results[(sizes[0], True)][1]
    print(f"{'scrape':<42}" + "".join(
        f"  {f'{results[(n, on)][1] * 1000:.0f} ms ({results[(n, on)][1] / base:.1f}x)':>22}"
        for n in sizes for on in (True, False)
    ))  # fmt: skip
    print(f"{'exposition size':<42}" + "".join(
        f"  {f'{results[(n, on)][2] / 1024:.0f} KiB':>22}" for n in sizes for on in (True, False)
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
