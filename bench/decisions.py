"""The placement decisions on bench/placement.py's request streams, as a fingerprint: a refactor that claims
"no change of behaviour" prints the same digest before and after (run it on both commits).

    python bench/decisions.py                  # digests for 100 and 1,000 nodes, binpack and spread
    python bench/decisions.py --dump FILE      # every decision, one line each, to diff
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dspool import placement as engine
from dspool.api import Strategy
from dspool.catalog import builtin_catalog
from dspool.inventory import build_pool
from placement import request_stream, synthetic_cluster

RUNS = [(100, 600), (1000, 6000)]


def decisions(nodes: int, requests: int, strategy: Strategy, seed: int) -> list[str]:
    """One line per decision of the stream: replica, where it went (or not) and why."""
    catalog = builtin_catalog()
    raw_nodes, raw_pods = synthetic_cluster(nodes, catalog, random.Random(seed))
    pool = build_pool(raw_nodes, raw_pods, [], catalog)
    lines = []
    for request in request_stream(requests, catalog, strategy, random.Random(seed + 1)):
        decision = engine.place_replica(pool, request, catalog)
        placed = decision.placement
        if placed is not None:
            engine.reserve(pool, request.deployment, placed)
            where = f"{placed.accelerator} {'+'.join(f'{n.name}:{n.devices}' for n in placed.nodes)}"
        else:
            where = "-"
        lines.append(f"{request.deployment}#{request.replica} {where} | {decision.reason}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dump", metavar="FILE", help="write every decision to FILE")
    args = parser.parse_args()
    dump = []
    for nodes, requests in RUNS:
        for strategy in (Strategy.BINPACK, Strategy.SPREAD):
            lines = decisions(nodes, requests, strategy, args.seed)
            digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
            placed = sum(1 for line in lines if " - | " not in line)
            print(f"{nodes:>5} nodes {strategy.value:<8} {len(lines):>5} decisions {placed:>5} placed  sha256 {digest}")
            dump += [f"{nodes} {strategy.value} {line}" for line in lines]
    if args.dump:
        Path(args.dump).write_text("\n".join(dump) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
