"""Pass cost: one reconcile pass with ONE DSD changed, the pool built from every node and pod per pass
(before: ``PassRunner(incremental=False)``) against the pool kept between passes (after), side by side.

``dspool.loop.PassRunner`` is driven in-process with a writer that answers at once (no control plane), on a
pool of N L20 servers (8 GPUs each) with ``--pods-per-node`` pods each (3 holding a GPU, the others an RDMA
device: every one is kept by the pod watch and walked by a full build) and ``--dsds`` one-replica DSDs of the
1.5B placed and Ready (their pods bound and Ready, their statuses echoed). Between two measured passes one DSD
is scaled (1 -> 2 -> 1 replicas), the watch echoes the last pass's status and binds (or removes) that DSD's pods:
what a pass sees when one user changes one thing. Both arms run in lockstep, pass for pass, on the same
views, so the machine's noise falls on both (compare the ratio, not the seconds).

"first pass" is the start: every node and pod new to the pass (the watches' first lists).

    python bench/pass_cost.py                         # 100, 1,000 and 5,000 nodes
    python bench/pass_cost.py --nodes 100 1000 --passes 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dspool import api
from dspool.api import PLACEMENT_LABEL, REPLICA_LABEL, ReplicaPlacement, placement_fingerprint
from dspool.catalog import Catalog, builtin_catalog
from dspool.inventory import WatchChanges, pod_key
from dspool.ledger import WriteLedger, digest, object_key
from dspool.loop import PassRunner, Snapshot
from dspool.metrics import OperatorMetrics
from dspool.reconcile import Event, ReconcileSettings
from dspool.settings import OperatorSettings
from dspool.sim.fleet import NodeGroup, PoolFile, node_manifests
from dspool.views import compact_node, compact_pod

MODEL = "deepseek-r1-distill-qwen-1.5b"
GPU_PODS_PER_NODE = 3


class InstantWriter:
    """The writes of a pass, answered at once: statuses kept (the watch echoes them later), objects in the ledger."""

    def __init__(self) -> None:
        self.ledger = WriteLedger()
        self.statuses: dict[str, dict[str, Any]] = {}

    def write_status(self, namespace: str, name: str, status: dict[str, Any], old: Mapping[str, Any]) -> None:
        self.statuses[name] = status

    def apply_object(self, uid: str, namespace: str, obj: dict[str, Any]) -> None:
        self.ledger.record_applied(object_key(namespace, obj), digest(obj))
        label = obj["metadata"]["labels"].get(api.DEPLOYMENT_LABEL, "?")
        self.ledger.record_owned(uid, namespace, label, (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]))

    def delete_stale(self, uid: str, namespace: str, name: str, objects: Sequence[dict[str, Any]]) -> None:
        wanted = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in objects}
        self.ledger.swap_wanted(uid, namespace, name, wanted)

    def post_events(self, metadata: Mapping[str, Any], events: Sequence[Event]) -> None:
        pass

    def delete_object(self, namespace: str, api_version: str, kind: str, name: str) -> None:
        pass

    def annotate(self, namespace: str, api_version: str, kind: str, name: str, annotations: dict[str, str]) -> None:
        pass


def pool_views(nodes: int, pods_per_node: int, catalog: Catalog) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Compact node and pod views, as the watches keep them."""
    fleet = PoolFile(name="bench", groups=[NodeGroup(name="l20", count=nodes, accelerator="L20-48G")])
    node_views, pod_views = [], []
    for manifest in node_manifests(fleet, catalog):
        manifest.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
        node_views.append(compact_node(manifest))
        name = manifest["metadata"]["name"]
        for index in range(pods_per_node):
            resource = "nvidia.com/gpu" if index < GPU_PODS_PER_NODE else "rdma/hca"
            body = {
                "metadata": {"name": f"{name}-app-{index}", "namespace": "apps", "labels": {"app": "other"}},
                "spec": {"nodeName": name,
                         "containers": [{"name": "c", "resources": {"requests": {resource: "1"}}}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }  # fmt: skip
            view = compact_pod(body)
            assert view is not None
            pod_views.append(view)
    return node_views, pod_views


def dsd(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION, "kind": api.KIND,
        "metadata": {"name": name, "namespace": "ai", "uid": f"uid-{name}", "generation": 1,
                     "creationTimestamp": "2026-12-05T10:00:00Z", "deletionTimestamp": None},
        "spec": {"model": MODEL, "replicas": replicas},
        "status": {},
    }  # fmt: skip


def ready_pods(status: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The Running, Ready pods of a DSD's placements, labelled as dspool's builders label them."""
    pods = {}
    for raw in status.get("placements") or []:
        placement = ReplicaPlacement.model_validate(raw)
        labels = {api.DEPLOYMENT_LABEL: name, REPLICA_LABEL: str(placement.replica),
                  PLACEMENT_LABEL: placement_fingerprint(placement)}  # fmt: skip
        body = {
            "metadata": {"name": f"{name}-{placement.replica}-{labels[PLACEMENT_LABEL]}", "namespace": "ai",
                         "labels": labels},
            "spec": {"nodeName": placement.nodes[0].name,
                     "containers": [{"name": "engine", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }  # fmt: skip
        view = compact_pod(body)
        assert view is not None
        pods[pod_key(view)] = view
    return pods


class Arm:
    """One way of running passes (``incremental`` or not) on its own copy of the cluster's views."""

    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]], dsds: int, incremental: bool):
        self.writer = InstantWriter()
        settings = OperatorSettings(metrics_port=0, write_concurrency=4)
        self.runner = PassRunner(settings, builtin_catalog(), self.writer, OperatorMetrics(), incremental=incremental)
        self.nodes = {v["metadata"]["name"]: v for v in nodes}
        self.pods = {pod_key(v): v for v in pods}
        self.dsds = {f"d{i:04d}": dsd(f"d{i:04d}", 1) for i in range(dsds)}
        self.own_pods: dict[str, dict[str, dict[str, Any]]] = {}
        self.changes = WatchChanges(dict(self.nodes), dict(self.pods))  # the first lists: everything is new
        self.settings = ReconcileSettings()  # one object, as the runtime's: a steady decision holds it

    def run_pass(self) -> tuple[float, int]:
        """One pass (timed from taking the snapshot, as the runtime does, to its statuses stored)."""
        started = time.perf_counter()
        changes, self.changes = self.changes, WatchChanges()
        snapshot = Snapshot(list(self.nodes.values()), list(self.pods.values()), list(self.dsds.values()),
                            changes=changes)  # fmt: skip
        outcome = self.runner.run_pass(snapshot, self.settings)
        seconds = time.perf_counter() - started
        self.runner.drain()
        return seconds, len(outcome.results)

    def echo(self) -> None:
        """The watch catches up: each DSD's written status, and its pods bound and Ready where it was placed."""
        for name, status in self.writer.statuses.items():
            body = self.dsds.get(name)
            if body is None or body["status"] is status:
                continue
            self.dsds[name] = {**body, "status": status}
            wanted = ready_pods(status, name)
            held = self.own_pods.get(name, {})
            for key in held.keys() - wanted.keys():
                del self.pods[key]
                self.changes.pods[key] = None
            for key in wanted.keys() - held.keys():
                self.pods[key] = self.changes.pods[key] = wanted[key]
            self.own_pods[name] = {key: self.pods[key] for key in wanted}

    def scale(self, name: str) -> None:
        """The one change between two passes: a user scales one DSD (1 -> 2 -> 1 replicas)."""
        body = self.dsds[name]
        replicas = 2 if body["spec"]["replicas"] == 1 else 1
        self.dsds[name] = {**body, "spec": {**body["spec"], "replicas": replicas}}


def measure(nodes: int, pods_per_node: int, dsds: int, passes: int) -> dict[str, Any]:
    """Both arms in lockstep: the first pass, a few to settle, then ``passes`` with one DSD changed each."""
    node_views, pod_views = pool_views(nodes, pods_per_node, builtin_catalog())
    arms = {"before": Arm(node_views, pod_views, dsds, False), "after": Arm(node_views, pod_views, dsds, True)}
    first = {name: arm.run_pass()[0] for name, arm in arms.items()}
    for _ in range(3):  # the statuses echoed, the pods bound and Ready: every DSD steady
        for arm in arms.values():
            arm.echo()
            arm.run_pass()
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    decided: dict[str, list[int]] = {name: [] for name in arms}
    for index in range(passes):
        for name, arm in arms.items():
            arm.echo()
            arm.scale(f"d{index % dsds:04d}")
            took, count = arm.run_pass()
            seconds[name].append(took)
            decided[name].append(count)
    assert decided["before"] == decided["after"], "both arms must decide the same DSDs"
    return {"first": first, "pass": {name: statistics.median(values) for name, values in seconds.items()},
            "decided": statistics.median(decided["after"])}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--pods-per-node", type=int, default=10)
    parser.add_argument("--dsds", type=int, default=50)
    parser.add_argument("--passes", type=int, default=8, help="measured passes, one DSD changed before each")
    args = parser.parse_args()
    print(f"{'nodes':>6} {'pods':>7} {'DSDs':>5}  {'first pass s: before':>20} {'after':>7}  "
          f"{'pass s (median): before':>23} {'after':>7} {'ratio':>7}  {'decided/pass':>12}")  # fmt: skip
    for nodes in args.nodes:
        found = measure(nodes, args.pods_per_node, args.dsds, args.passes)
        first, per_pass = found["first"], found["pass"]
        ratio = per_pass["before"] / per_pass["after"]
        pods = nodes * args.pods_per_node
        print(f"{nodes:>6,} {pods:>7,} {args.dsds:>5}  {first['before']:>20.3f} {first['after']:>7.3f}  "
              f"{per_pass['before']:>23.4f} {per_pass['after']:>7.4f} {ratio:>6.1f}x  {found['decided']:>12}",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
