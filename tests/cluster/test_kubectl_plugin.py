"""`kubectl dspool ...`: the package installs kubectl-dspool, which kubectl runs as a plugin from PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from test_operator import kubectl_path

from dspool.sim.fleet import PoolHandle


def kubectl_dspool(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `kubectl dspool ARGS` with the venv's scripts on PATH, as an installed package puts them."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{scripts}:{os.environ.get('PATH', '')}", "KUBECONFIG": kubeconfig}
    return subprocess.run([kubectl_path(), "dspool", *args], capture_output=True, text=True, env=env)


def test_kubectl_dspool_plans_and_reads_the_live_pool(kubeconfig: str, fake_pool: Callable[[str], PoolHandle]) -> None:
    planned = kubectl_dspool(kubeconfig, "plan", "deepseek-r1", "-a", "A100-80G", "-o", "json")
    assert planned.returncode == 0, planned.stderr
    assert (json.loads(planned.stdout)["precision"], json.loads(planned.stdout)["devicesPerReplica"]) == ("w8a16", 16)
    pool = fake_pool("small.yaml")
    listed = kubectl_dspool(kubeconfig, "pool", "--node-selector", f"dspool.io/pool={pool.name}", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(n["name"] for n in json.loads(listed.stdout)["nodes"]) == sorted(pool.node_names)
