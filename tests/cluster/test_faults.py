"""The fault suite, short form (the long one is ``python bench/faults.py --runs 200``).

Two seeded runs of e2e/faultsuite.py on fresh 8-node pools: DSD creates, scales, deletes and node losses,
with every fault at least once: kill -9 of the operator, a kube-apiserver restart, two operators racing
for the Lease (one killed). After each run the DSDs must settle with no node oversubscribed, every DSD
placed or explained, no orphaned workload and no placement lost.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
import faultsuite

pytestmark = pytest.mark.serial  # restarts kube-apiserver: every other test would lose it too

# (seed, faults the run must contain): the two runs together inject every fault.
RUNS = [
    (101, ("operator-kill", "node-loss", "lease-race")),
    (202, ("apiserver-restart", "operator-kill")),
]


def test_randomized_runs_with_faults_keep_every_invariant(kubeconfig: str, crd_installed: None, tmp_path: Path) -> None:
    if os.environ.get("DSPOOL_KUBECONFIG"):
        pytest.skip("restarts kube-apiserver: only on the local control plane")
    api_client, _ = faultsuite.connect(kubeconfig)
    results = []
    for index, (seed, required) in enumerate(RUNS):
        run = faultsuite.FaultRun(api_client, kubeconfig, index, seed, tmp_path, steps=7, required=required)
        results.append(run.run())
        print(faultsuite.run_line(results[-1]))
    print(faultsuite.summary_table(results))
    injected = {fault for result in results for fault, count in result.injected.items() if count}
    assert set(faultsuite.FAULTS) <= injected, f"faults not injected: {set(faultsuite.FAULTS) - injected}"
    violations = [f"run {r.index} (seed {r.seed}) {v.invariant}: {v.detail}" for r in results for v in r.violations]
    assert not violations, "\n".join(violations) + f"\noperator logs in {tmp_path}"
