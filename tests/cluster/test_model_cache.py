"""The node model cache on the local control plane: fetch Jobs on exactly the planned nodes, completed by
KWOK (its pod-complete stage) and tracked by the real Job controller; engine pods that read the cache and wait
for the weights; an operator restart that finds the fetches where they were."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import OperatorProcess, PoolOf, wait_for  # tests/cluster is on sys.path (rootdir-relative import)
from kubernetes import client
from test_operator import create_dsd, get_dsd, placed_nodes, wait_phase

FETCH_JOBS = "dspool.io/component=model-fetch"


@pytest.fixture
def cached_operator(kubeconfig: str, namespace: str, crd_installed: None, tmp_path: Path) -> Iterator[Any]:
    """Factory: an operator for this namespace and a pool, running with the node model cache."""
    started: list[OperatorProcess] = []

    def start(pool_name: str) -> OperatorProcess:
        operator = OperatorProcess(kubeconfig, namespace, pool_name, tmp_path / "operator.log")
        operator.args += ["--model-cache", "--max-fetches", "2"]
        operator.start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


def weights_condition(dsd: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (dsd.get("status") or {}).get("conditions") or [] if c["type"] == "WeightsReady"), None)


def test_weights_are_fetched_once_per_planned_node_and_the_engine_reads_them_from_the_cache(
    pool_of: PoolOf, cached_operator: Any, api_client: client.ApiClient, custom: client.CustomObjectsApi,
    apps_v1: client.AppsV1Api, namespace: str, kubeconfig: str,
) -> None:  # fmt: skip
    pool = pool_of("cache", """
        - {name: l20, count: 2, accelerator: L20-48G}
    """)  # fmt: skip
    operator = cached_operator(pool.name)
    batch = client.BatchV1Api(api_client)
    create_dsd(custom, namespace, "small", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 2})

    def weights_ready() -> dict[str, Any] | None:
        dsd = get_dsd(custom, namespace, "small")
        condition = weights_condition(dsd)
        return dsd if condition is not None and condition["status"] == "True" else None

    dsd = wait_for(weights_ready, 90, "the DSD's WeightsReady condition to turn True")
    nodes = sorted({node for replica in placed_nodes(dsd) for node, _ in replica})
    jobs = batch.list_namespaced_job(namespace, label_selector=FETCH_JOBS).items
    fetched_on = sorted(job.metadata.annotations["dspool.io/node"] for job in jobs)
    assert fetched_on == nodes, operator.log_tail()  # one fetch per planned node, none elsewhere
    assert all(job.status.succeeded == 1 for job in jobs)  # KWOK completed them; the Job controller recorded it
    for job in jobs:
        container = job.spec.template.spec.containers[0]
        assert container.command[:3] == ["python", "-m", "dspool.weights.fetch"]
        assert container.resources.requests["ephemeral-storage"].endswith("Gi")

    deployment = apps_v1.read_namespaced_deployment("small-0", namespace)
    pod = deployment.spec.template.spec
    assert [c.name for c in pod.init_containers] == ["wait-for-weights"]
    cache = next(v for v in pod.volumes if v.name == "model-cache")
    assert cache.host_path.path == "/var/lib/dspool/models"
    assert any("/var/lib/dspool/models/" in arg for arg in pod.containers[0].args or [])  # vLLM reads the entry
    wait_phase(custom, namespace, "small", "Ready", 60)
    shown = subprocess.run(
        [sys.executable, "-m", "dspool", "cache", "-o", "json", "--kubeconfig", kubeconfig],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = [row for row in json.loads(shown) if row["node"] in nodes]
    assert [(row["node"], row["state"]) for row in rows] == [(node, "Ready") for node in nodes]

    operator.stop(kill=True)  # a restarted operator finds the cache where it was: no second fetch
    operator.start()
    create_dsd(custom, namespace, "again", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 1})
    wait_phase(custom, namespace, "again", "Ready", 90)
    again = get_dsd(custom, namespace, "again")
    condition = weights_condition(again)
    assert condition is not None and condition["status"] == "True", operator.log_tail()
    jobs_after = batch.list_namespaced_job(namespace, label_selector=FETCH_JOBS).items
    assert len(jobs_after) == len(jobs)  # the new replica sits on a node that already holds the entry
