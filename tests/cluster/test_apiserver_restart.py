"""An operator that starts while kube-apiserver is coming back must still serve DSDs once it is back.

Found by the fault suite (bench/faults.py, run 8, seed 11008): the operator's start overlapped a kube-apiserver
restart; kopf's first API discovery answered before the server had installed every path ("the request has been
made before all known HTTP paths have been installed"), kopf logged "Unresolved resources cannot be served (try
creating their CRDs): Selector(group='dspool.io', ... 'deepseekdeployments'), Selector(group='policy', ...)" and
never watched DeepSeekDeployments afterwards. The process stayed up, held no Lease and wrote nothing: 12 DSDs
had no status 180 s later. dspool now watches DSDs, nodes, pods and PDBs with its own informers, which list
again after any error (kopf watches only CRDs). Here the same overlap is provoked on purpose: kube-apiserver is
hard-restarted 2.5 s after the operator starts (it reproduced the bug; 1.5 s missed the window).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLUSTER_SCRIPT, OperatorProcess, PoolOf, wait_for
from kubernetes import client

from dspool import api

pytestmark = pytest.mark.serial  # restarts kube-apiserver: every other test would lose it too

RESTART_AFTER_SECONDS = float(os.environ.get("DSPOOL_TEST_RESTART_AFTER_SECONDS", "2.5"))


def test_an_operator_started_while_the_api_server_restarts_places_dsds_once_it_is_back(
    pool_of: PoolOf, custom: client.CustomObjectsApi, namespace: str, kubeconfig: str, tmp_path: Path,
    crd_installed: None,
) -> None:  # fmt: skip
    if os.environ.get("DSPOOL_KUBECONFIG"):
        pytest.skip("restarts kube-apiserver: only on the local control plane")
    pool = pool_of("restart", """
        - {name: l20, count: 1, accelerator: L20-48G}
    """)  # fmt: skip
    operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / "operator.log")
    operator.start()
    try:
        # As in the fault run: the server goes away while the operator imports, and comes back while it discovers.
        time.sleep(RESTART_AFTER_SECONDS)
        restart = subprocess.Popen([sys.executable, str(CLUSTER_SCRIPT), "restart", "kube-apiserver", "--hard"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        assert restart.wait(timeout=180) == 0, restart.stdout.read() if restart.stdout else ""
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "after-restart"},
                "spec": {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 1}}  # fmt: skip
        wait_for(lambda: custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body),
                 60, "the API server to take a create")  # fmt: skip

        def placed() -> bool:
            dsd = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "after-restart")
            return bool((dsd.get("status") or {}).get("placements"))

        wait_for(placed, 90, f"the operator to place the DSD (log: {operator.log_path})")
        assert "Unresolved resources" not in operator.log_path.read_text(errors="replace")
    finally:
        operator.stop()
