"""Load: N DeepSeekDeployments created at once on a generated pool of M fake nodes, one operator; time until
every DSD has converged (shared by bench/load.py and tests/cluster/test_load.py).

Creates run on a thread pool so that the creation rate is not what is measured. A DSD has converged when its
status is for its current generation and its phase is settled (Ready, Unschedulable, Degraded, Failed).
Afterwards the fault suite's end-of-run invariants are checked: no node oversubscribed, every DSD placed
or explained, no orphaned workload.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from dspool import api
from dspool.sim.apply import apply_pool, delete_pool
from dspool.sim.fleet import POOL_LABEL, PoolFile, node_manifests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faultsuite
from genpool import generate_pool

MIX = (  # (model, share): mostly distills, a few R1
    ("deepseek-r1", 0.02),
    ("deepseek-r1-distill-llama-70b", 0.08),
    ("deepseek-r1-distill-qwen-32b", 0.15),
    ("deepseek-r1-distill-qwen-14b", 0.20),
    ("deepseek-r1-distill-llama-8b", 0.20),
    ("deepseek-r1-distill-qwen-7b", 0.15),
    ("deepseek-r1-distill-qwen-1.5b", 0.20),
)


@dataclass
class LoadResult:
    """Timings (seconds from the first create) and what the DSDs ended as."""

    nodes: int
    deployments: int
    pool_seconds: float = 0.0
    create_seconds: float = 0.0
    all_status_seconds: float | None = None
    converged_seconds: float | None = None
    phases: Counter[str] = field(default_factory=Counter)
    placements: int = 0
    violations: list[faultsuite.Violation] = field(default_factory=list)

    def table(self) -> str:
        """One header line and one value line."""
        phases = " ".join(f"{p}={n}" for p, n in sorted(self.phases.items()))
        cells = [
            ("nodes", self.nodes), ("DSDs", self.deployments), ("pool apply s", f"{self.pool_seconds:.1f}"),
            ("create s", f"{self.create_seconds:.1f}"),
            ("all have status s", _seconds(self.all_status_seconds)), ("converged s", _seconds(self.converged_seconds)),
            ("replicas placed", self.placements), ("violations", len(self.violations)), ("phases", phases),
        ]  # fmt: skip
        widths = [max(len(h), len(str(v))) for h, v in cells]
        header = "  ".join(f"{h:>{w}}" for (h, _), w in zip(cells, widths, strict=True))
        values = "  ".join(f"{v!s:>{w}}" for (_, v), w in zip(cells, widths, strict=True))
        return f"{header}\n{values}"


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def run_load(
    api_client: client.ApiClient, kubeconfig: str, nodes: int, deployments: int, seed: int = 3, threads: int = 16,
    timeout: float = 1800.0, log_dir: Path | None = None, progress: bool = False,
) -> LoadResult:  # fmt: skip
    """Apply the pool, start the operator, create the DSDs at once, wait for convergence, check, clean up."""
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    suffix = uuid.uuid4().hex[:6]
    pool = PoolFile.model_validate(generate_pool(nodes, seed, f"load-{suffix}")).model_copy(
        update={"name_prefix": f"load-{suffix}-"}
    )
    namespace = f"load-{suffix}"
    result = LoadResult(nodes, deployments)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="dspool-load-"))
    operator = faultsuite.OperatorProcess(kubeconfig, namespace, pool.name, log_dir / f"{namespace}-operator.log")
    operator.args += ["--no-node-metrics", "--resync-seconds", "30"]
    started = time.monotonic()
    apply_pool(core, pool)
    names = {n["metadata"]["name"] for n in node_manifests(pool)}
    _wait_until(lambda: _ready_nodes(core, pool.name) == len(names), 600)
    result.pool_seconds = time.monotonic() - started
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        operator.start()
        coordination = client.CoordinationV1Api(api_client)
        _wait_until(lambda: _holder(coordination, namespace, f"dspool-{pool.name}") != "", 120)
        time.sleep(2)  # kopf lists nodes and pods before the first pass
        rng = random.Random(seed)
        bodies = []
        for index in range(deployments):
            model = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX])[0]
            spec = {"model": model, "replicas": 1 if model == "deepseek-r1" else rng.choice([1, 1, 1, 2])}
            bodies.append({"apiVersion": api.API_VERSION, "kind": api.KIND,
                           "metadata": {"name": f"d{index:04d}"}, "spec": spec})  # fmt: skip
        creating = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=creating)
        creating.connection_pool_maxsize = threads  # one connection per thread
        creator = client.CustomObjectsApi(client.ApiClient(creating))
        created = time.monotonic()
        with ThreadPoolExecutor(max_workers=threads) as executor:
            list(executor.map(lambda b: creator.create_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, b), bodies))  # fmt: skip
        result.create_seconds = time.monotonic() - created
        deadline = created + timeout
        items: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
            current = [
                i for i in items if (i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"]
            ]
            if result.all_status_seconds is None and len(current) == deployments:
                result.all_status_seconds = time.monotonic() - created
            settled = [i for i in current if i["status"].get("phase") in faultsuite.SETTLED_PHASES]
            if progress:
                print(
                    f"  {time.monotonic() - created:6.1f}s  status {len(current)}  settled {len(settled)}", flush=True
                )
            if len(settled) == deployments:
                result.converged_seconds = time.monotonic() - created
                break
            time.sleep(2)
        result.phases = Counter((i.get("status") or {}).get("phase") or "none" for i in items)
        result.placements = sum(len((i.get("status") or {}).get("placements") or []) for i in items)
        result.violations = _check(api_client, items, namespace, pool)
        if operator.died_unexpectedly():
            result.violations.append(faultsuite.Violation("operator-died", operator.log_text()[-2000:]))
    finally:
        operator.stop()
        core.delete_namespace(namespace)
        delete_pool(core, pool)
    return result


def _check(api_client: client.ApiClient, dsds: list[dict[str, Any]], namespace: str, pool: PoolFile) -> list[Any]:
    core = client.CoreV1Api(api_client)
    allocatable = {}
    for manifest in node_manifests(pool):
        values = manifest["status"]["allocatable"]
        resource = next(k for k in values if "/" in k)
        allocatable[manifest["metadata"]["name"]] = (resource, int(values[resource]))
    pods = [api_client.sanitize_for_serialization(p) for p in core.list_pod_for_all_namespaces().items]
    workloads = []
    for kind, lister in (("deployments", client.AppsV1Api(api_client).list_namespaced_deployment),
                         ("services", core.list_namespaced_service)):  # fmt: skip
        for item in lister(namespace, label_selector=api.DEPLOYMENT_LABEL).items:
            if item.metadata.deletion_timestamp is None:
                workloads.append((kind, api_client.sanitize_for_serialization(item)))
    return [
        *faultsuite.check_nodes_fit(dsds, allocatable, pods),
        *faultsuite.check_explained(dsds),
        *faultsuite.check_no_orphans(dsds, workloads),
    ]


def _ready_nodes(core: client.CoreV1Api, pool: str) -> int:
    nodes = core.list_node(label_selector=f"{POOL_LABEL}={pool}").items
    return sum(1 for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or []))


def _holder(coordination: client.CoordinationV1Api, namespace: str, name: str) -> str:
    try:
        spec = coordination.read_namespaced_lease(name, namespace).spec
    except client.exceptions.ApiException:
        return ""
    return (spec.holder_identity or "") if spec else ""


def _wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s")
        time.sleep(0.5)
