#!/usr/bin/env python3
"""Create or delete a simulated GPU/NPU pool (fake kwok nodes) in a cluster.

    python e2e/fleet.py apply examples/pools/enterprise-mixed.yaml
    python e2e/fleet.py delete examples/pools/enterprise-mixed.yaml
    python e2e/fleet.py show examples/pools/small.yaml       # print the Node manifests, touch nothing

The cluster is the one in $DSPOOL_KUBECONFIG, else the local control plane (.cluster/kubeconfig from
`python e2e/cluster.py up`). The logic lives in dspool.sim.fleet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from dspool.sim.apply import apply_pool, delete_pool
from dspool.sim.fleet import load_pool, node_manifests

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_KUBECONFIG = REPO_ROOT / ".cluster" / "kubeconfig"


def default_kubeconfig() -> str:
    """Return $DSPOOL_KUBECONFIG, else the local control plane's kubeconfig."""
    return os.environ.get("DSPOOL_KUBECONFIG") or str(LOCAL_KUBECONFIG)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["apply", "delete", "show"])
    parser.add_argument("pool_file", type=Path)
    parser.add_argument("--kubeconfig", default=default_kubeconfig())
    options = parser.parse_args(argv)

    pool = load_pool(options.pool_file)
    if options.command == "show":
        yaml.safe_dump_all(node_manifests(pool), sys.stdout, sort_keys=False)
        return 0

    from kubernetes import client, config

    if not Path(options.kubeconfig).exists():
        print(f"error: no kubeconfig at {options.kubeconfig}; run `python e2e/cluster.py up`", file=sys.stderr)
        return 1
    core_v1 = client.CoreV1Api(config.new_client_from_config(config_file=options.kubeconfig))
    started = time.monotonic()
    if options.command == "apply":
        count = apply_pool(core_v1, pool)
        verb = "applied"
    else:
        count = delete_pool(core_v1, pool)
        verb = "deleted"
    print(f"{verb} {count} nodes of pool {pool.name} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
