"""dspool against kube-scheduler, end to end, side by side in one run on the same fake pool.

    python bench/e2e.py --nodes 1000 --replicas 500
    python bench/e2e.py --nodes 5000 --replicas 500

On the local control plane (`make cluster-up`): a pool of N fake L20 nodes (8 GPUs each), then
1. **kube-scheduler alone**: R plain pods, each requesting one `nvidia.com/gpu`, created concurrently;
   time until every one is bound to a node;
2. **the same pods through one-replica Deployments**, without dspool: the controller manager's
   Deployment -> ReplicaSet -> Pod chain that dspool's replicas also go through, then the scheduler;
3. **dspool**: a fresh `dspool run` over the same pool; the time until its watches have synced and its
   first pass is done (start-up), then R single-replica DSDs of the 1.5B distill created the same way;
   time until every serving pod dspool created is bound (dspool places, its Deployment's pod is pinned to
   the planned node, the scheduler binds it).
All rates are replicas per second from the first create to the last bind; the ratio is the figure that
means something on a noisy 2-core machine. Also printed: API requests dspool made per replica (its
`dspool_api_requests_total`), the operator's peak RSS, and its CPU seconds. Cleans up afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from dspool import api
from dspool.sim.apply import apply_pool, delete_pool
from dspool.sim.fleet import POOL_LABEL, NodeGroup, PoolFile

REPO = Path(__file__).resolve().parent.parent
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
CREATORS = 16  # concurrent creates: the creation rate must not be what is measured
MODEL = "deepseek-r1-distill-qwen-1.5b"
METRICS_PORT = 18093


class BindWatch:
    """Records when each pod of a namespace was first seen bound (spec.nodeName set)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, label_selector: str = "") -> None:
        self.bound: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(core, namespace, label_selector), daemon=True)
        self._thread.start()

    def _run(self, core: client.CoreV1Api, namespace: str, label_selector: str) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    core.list_namespaced_pod, namespace, label_selector=label_selector, timeout_seconds=60,
                    deserialize=False,
                ):  # fmt: skip
                    pod = event["object"]  # deserialize=False: the JSON as sent
                    if (pod.get("spec") or {}).get("nodeName"):
                        self.bound.setdefault(pod["metadata"]["name"], time.monotonic())
                    if self._stop.is_set():
                        return
            except Exception:  # a watch timing out or the server hiccuping: watch again
                time.sleep(0.2)

    def wait(self, count: int, timeout: float) -> float:
        """Wait until ``count`` pods were bound; return when the last one was."""
        deadline = time.monotonic() + timeout
        while len(self.bound) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.bound)} of {count} pods bound after {timeout:.0f}s")
            time.sleep(0.1)
        self._stop.set()
        return max(sorted(self.bound.values())[:count])


def create_all(make: Callable[[int], Any], count: int) -> float:
    """Create ``count`` objects with ``make(index)`` on CREATORS threads; return when the first was sent."""
    first = time.monotonic()
    with ThreadPoolExecutor(max_workers=CREATORS) as executor:
        list(executor.map(make, range(count)))
    return first


def plain_pod(index: int, pool: str) -> dict[str, Any]:
    """A pod asking for one GPU of the pool, as a user would write it for kube-scheduler."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"plain-{index:05d}", "labels": {"bench": "plain"}},
        "spec": {
            "nodeSelector": {POOL_LABEL: pool},
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "engine", "image": "engine:bench",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}],
        },
    }  # fmt: skip


def deployment(index: int, pool: str) -> dict[str, Any]:
    """A one-replica Deployment of the same pod."""
    pod = plain_pod(index, pool)
    labels = {"bench": "deploy", "index": str(index)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"deploy-{index:05d}"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod["spec"]}},
    }  # fmt: skip


def wait_gone(core: client.CoreV1Api, namespace: str) -> None:
    """Delete a namespace and wait until it is gone."""
    core.delete_namespace(namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return
        time.sleep(1)


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of one metric family in a Prometheus text page."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def proc_status(pid: int) -> dict[str, str]:
    """Fields of /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run(nodes: int, replicas: int, timeout: float) -> dict[str, Any]:
    """Both halves on one pool; returns the figures."""
    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    name = f"e2e-{nodes}"
    run_id = uuid.uuid4().hex[:5]  # namespaces of an earlier run may still be terminating
    pool = PoolFile(name=name, groups=[NodeGroup(name=f"l20-{nodes}", count=nodes, accelerator="L20-48G")])
    figures: dict[str, Any] = {"nodes": nodes, "replicas": replicas}
    started = time.monotonic()
    apply_pool(core, pool)
    figures["pool_apply_s"] = time.monotonic() - started
    try:
        # 1. kube-scheduler alone
        plain_ns = f"bench-plain-{nodes}-{run_id}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=plain_ns)))
        binds = BindWatch(core, plain_ns)
        first = create_all(
            lambda i: core.create_namespaced_pod(plain_ns, plain_pod(i, name), _preload_content=False), replicas
        )
        last = binds.wait(replicas, timeout)
        figures["scheduler_rate"] = replicas / (last - first)
        wait_gone(core, plain_ns)

        # 1b. the same pods through one-replica Deployments (the chain dspool's replicas also go through:
        # Deployment -> ReplicaSet -> Pod in the controller manager, then the scheduler), without dspool
        apps = client.AppsV1Api(api_client)
        deploy_ns = f"bench-deploy-{nodes}-{run_id}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=deploy_ns)))
        binds = BindWatch(core, deploy_ns)
        first = create_all(
            lambda i: apps.create_namespaced_deployment(deploy_ns, deployment(i, name), _preload_content=False),
            replicas,
        )
        last = binds.wait(replicas, timeout)
        figures["deployments_rate"] = replicas / (last - first)
        wait_gone(core, deploy_ns)

        # 2. dspool
        dsd_ns = f"bench-dspool-{nodes}-{run_id}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=dsd_ns)))
        log_path = Path(tempfile.mkdtemp()) / "operator.log"
        log = log_path.open("w")
        env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
        launched = time.monotonic()
        operator = subprocess.Popen(
            [sys.executable, "-m", "dspool", "run", "--node-selector", f"{POOL_LABEL}={name}", "--namespace", dsd_ns,
             "--liveness-port", "0", "--metrics-port", str(METRICS_PORT), "--no-node-metrics", "--lease-name",
             f"bench-{name}-{run_id}", "--rebalance", "off"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            while "first pass done" not in log_path.read_text():
                if operator.poll() is not None or time.monotonic() - launched > timeout:
                    raise RuntimeError(f"the operator did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            figures["startup_s"] = time.monotonic() - launched
            cpu_before = cpu_seconds(operator.pid)
            binds = BindWatch(core, dsd_ns, label_selector=api.DEPLOYMENT_LABEL)

            def create_dsd(index: int) -> None:
                body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"d{index:05d}"},
                        "spec": {"model": MODEL, "replicas": 1}}  # fmt: skip
                custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, dsd_ns, api.PLURAL, body, _preload_content=False
                )

            first = create_all(create_dsd, replicas)
            last = binds.wait(replicas, timeout)
            figures["dspool_rate"] = replicas / (last - first)
            figures["operator_cpu_s"] = cpu_seconds(operator.pid) - cpu_before
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            figures["api_requests_per_replica"] = metric_sum(metrics, "dspool_api_requests_total") / replicas
            durations = "dspool_api_request_duration_seconds"
            figures["request_ms"] = {
                label: 1000.0
                * metric_sum(metrics, f"{durations}_sum{{{label}}}")
                / max(1.0, metric_sum(metrics, f"{durations}_count{{{label}}}"))
                for label in sorted(set(re.findall(durations + r"_count\{([^}]*)\}", metrics)))
            }
            figures["passes"] = int(metric_sum(metrics, "dspool_reconcile_pass_duration_seconds_count"))
            figures["pass_seconds"] = metric_sum(metrics, "dspool_reconcile_pass_duration_seconds_sum")
            figures["peak_rss_mib"] = int(re.sub(r"\D", "", proc_status(operator.pid)["VmHWM"])) / 1024
            bound_nodes = {pod.spec.node_name for pod in core.list_namespaced_pod(dsd_ns).items}
            figures["nodes_used"] = len(bound_nodes)
        finally:
            operator.terminate()
            operator.wait(timeout=60)
        wait_gone(core, dsd_ns)
    finally:
        delete_pool(core, pool)
    figures["ratio"] = figures["dspool_rate"] / figures["scheduler_rate"]
    figures["ratio_deployments"] = figures["dspool_rate"] / figures["deployments_rate"]
    return figures


def main() -> int:
    """Run the comparison and print one table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000])
    parser.add_argument("--replicas", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [run(n, args.replicas, args.timeout) for n in args.nodes]
    for row in rows:
        latencies = ", ".join(f"{label}: {ms:.0f} ms" for label, ms in row.pop("request_ms").items())
        print(f"{row['nodes']} nodes, mean API request time by kind: {latencies}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["nodes", "replicas", "pods/s: plain", "Deployments", "dspool", "ratio", "ratio vs Deployments",
              "start-up s", "API req/replica", "passes", "pass s", "peak RSS MiB", "CPU s", "nodes used"]  # fmt: skip
    keys = ["nodes", "replicas", "scheduler_rate", "deployments_rate", "dspool_rate", "ratio", "ratio_deployments",
            "startup_s", "api_requests_per_replica", "passes", "pass_seconds", "peak_rss_mib", "operator_cpu_s",
            "nodes_used"]  # fmt: skip
    print("  ".join(header))
    for row in rows:
        cells = [f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        print("  ".join(f"{c:>{len(h)}}" for h, c in zip(header, cells, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
