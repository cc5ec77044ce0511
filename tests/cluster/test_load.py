"""Load, small: 120 DeepSeekDeployments created at once (16 threads) on 40 fake nodes all converge, with no
node oversubscribed, every DSD placed or explained and no orphaned workload. The 1,000 x 1,000 figures come
from ``python bench/load.py``; no timing is asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
import faultsuite
import loadrun


def test_many_dsds_created_at_once_all_converge(kubeconfig: str, crd_installed: None, tmp_path: Path) -> None:
    api_client, _ = faultsuite.connect(kubeconfig)
    result = loadrun.run_load(api_client, kubeconfig, nodes=40, deployments=120, timeout=600, log_dir=tmp_path)
    print(result.table())
    assert result.converged_seconds is not None, f"not all converged: {result.phases}; logs in {tmp_path}"
    assert not result.violations, "\n".join(f"{v.invariant}: {v.detail}" for v in result.violations)
    assert sum(result.phases.values()) == 120 and result.placements > 0
