"""Load: 1,000 DeepSeekDeployments created at once on 1,000 fake nodes; time until all have converged.

    python bench/load.py                                  # 1,000 nodes, 1,000 DSDs (needs `make cluster-up`)
    python bench/load.py --nodes 200 --deployments 300

The pool comes from e2e/genpool.py (racks of 4-16 servers, 12 accelerator kinds); `dspool run` is limited to
it; the DSDs (mostly distills, 2% R1, 1-2 replicas) are created from 16 threads. Prints the time to apply
the pool, to create the DSDs, until every DSD has a status for its generation, and until every one has
converged (Ready, Unschedulable, Degraded or Failed), then the phases and the invariant violations
(e2e/faultsuite.py: oversubscribed nodes, unexplained DSDs, orphaned workloads). Cleans up afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
import faultsuite
import loadrun
from dspool.sim.apply import install_crd


def main() -> int:
    """Run the load scenario and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--progress", action="store_true", help="print the count of settled DSDs as it goes")
    args = parser.parse_args()
    api_client, kubeconfig = faultsuite.connect(args.kubeconfig)
    install_crd(api_client)
    result = loadrun.run_load(
        api_client, kubeconfig, args.nodes, args.deployments, seed=args.seed, threads=args.threads,
        timeout=args.timeout, progress=args.progress,
    )  # fmt: skip
    print(result.table())
    for violation in result.violations:
        print(f"  {violation.invariant}: {violation.detail}")
    return 0 if result.converged_seconds is not None and not result.violations else 1


if __name__ == "__main__":
    sys.exit(main())
