#!/usr/bin/env python3
"""Generate a large, realistic accelerator pool file for benchmarks and scale tests.

    python e2e/genpool.py --nodes 1000 --seed 1 > pool.yaml
    python e2e/fleet.py apply pool.yaml

Nodes come in racks (one node group each) of one accelerator kind, 4 to 16 servers, spread over
zones; every rack is its own network fabric (``dspool.io/fabric``). The mix leans on current
datacenter parts with a tail of inference cards and Ascend racks. Same seed, same file.
"""

from __future__ import annotations

import argparse
import random
import sys

import yaml

# (accelerator id from the catalog, share of racks, devices per node)
ACCELERATOR_MIX: tuple[tuple[str, float, int], ...] = (
    ("H200-141G", 0.16, 8),
    ("H100-80G", 0.18, 8),
    ("H800-80G", 0.05, 8),
    ("H20-96G", 0.08, 8),
    ("A100-80G", 0.14, 8),
    ("A800-80G", 0.04, 8),
    ("L20-48G", 0.08, 8),
    ("L40S-48G", 0.05, 8),
    ("RTX4090-24G", 0.06, 4),
    ("Ascend910B3", 0.10, 8),
    ("Ascend910B4", 0.04, 8),
    ("Ascend310P", 0.02, 8),
)
ZONES = ("zone-a", "zone-b", "zone-c")
RACK_SIZES = (4, 8, 8, 12, 16)


def generate_pool(nodes: int, seed: int, name: str) -> dict[str, object]:
    """Return a pool document with exactly `nodes` nodes."""
    rng = random.Random(seed)
    ids = [entry[0] for entry in ACCELERATOR_MIX]
    weights = [entry[1] for entry in ACCELERATOR_MIX]
    devices = {entry[0]: entry[2] for entry in ACCELERATOR_MIX}
    groups: list[dict[str, object]] = []
    remaining = nodes
    while remaining > 0:
        accelerator = rng.choices(ids, weights)[0]
        count = min(remaining, rng.choice(RACK_SIZES))
        rack = f"rack-{len(groups):04d}"
        groups.append(
            {
                "name": f"{rack}-{accelerator.lower()}",
                "count": count,
                "accelerator": accelerator,
                "devicesPerNode": devices[accelerator],
                "labels": {"dspool.io/fabric": rack, "topology.kubernetes.io/zone": rng.choice(ZONES)},
            }
        )
        remaining -= count
    return {"name": name, "groups": groups}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write the pool YAML to stdout."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, required=True, help="total number of nodes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", help="pool name (default: generated-<nodes>)")
    options = parser.parse_args(argv)
    if options.nodes < 1:
        parser.error("--nodes must be at least 1")
    pool = generate_pool(options.nodes, options.seed, options.name or f"generated-{options.nodes}")
    sys.stdout.write(f"# python e2e/genpool.py --nodes {options.nodes} --seed {options.seed}\n")
    yaml.safe_dump(pool, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
