"""Where the watches' memory goes: N nodes, M pods and D DSDs through decoding and compaction, offline.

    python bench/memory.py --nodes 5000 --pods 50000 --dsds 200
    python bench/memory.py --nodes 5000 --pods 50000 --dsds 200 --against 47da30e

Generates the objects as the API server returns them (a KWOK node with its ~25 labels, conditions,
images and managed fields; pods with their owner, managed fields, containers, volumes and status), writes
them once as list pages of 500 (``/tmp/dspool-memory-<N>-<M>-<D>/``), then, for each arm, in a fresh
process, reads the pages one by one (as the informer receives them), decodes and compacts each object,
and keeps the views as the informer keeps them (``{key: view}``), then builds the pool once (the first
pass). Each arm runs twice: once under ``tracemalloc`` (the peak and what the views hold at the end, and
the top five allocation sites of what is held), once without it (peak RSS, which ``tracemalloc`` would
inflate, and the seconds the decode and compaction took). Arms:

- ``old``: ``json.loads`` and the compaction of ``views.py`` at ``--against`` (default: the commit this
  branch started from), loaded from git;
- ``new``: :mod:`dspool.kube.decode` (the fields dspool reads only) and this tree's ``views.py``.

Pods per node (``--device-pods-per-node``, default 6) ask for one GPU each; the rest run without devices
(daemon sets, sidecars) and are decoded then dropped; ``--dspool-pods-per-dsd`` (2) of the device pods per
DSD are dspool's (its labels, a placement fingerprint).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGE = 500
BASE_COMMIT = "47da30e"
STAMP = "2026-12-05T04:43:35Z"


# ------------------------------------------------------------------------------------ realistic objects


def node_object(index: int) -> dict[str, Any]:
    """A KWOK L20 node as `kubectl get node -o json --show-managed-fields` prints it (GFD's labels added)."""
    name = f"l20-5000-{index:04d}"
    labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok",
        "node.kubernetes.io/instance-type": "gpu.8xl20", "topology.kubernetes.io/zone": f"zone-{index % 3}",
        "topology.kubernetes.io/region": "region-1", "dspool.io/pool": "e2e-5000", "dspool.io/node-group": "l20-5000",
        "dspool.io/fabric": f"rack-{index // 32}", "nvidia.com/gpu.product": "NVIDIA-L20", "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "46068", "nvidia.com/gpu.family": "ada-lovelace", "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.compute.minor": "9", "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.driver.minor": "90", "nvidia.com/cuda.runtime.major": "12",
        "nvidia.com/cuda.runtime.minor": "4", "nvidia.com/gfd.timestamp": "1764900000",
        "nvidia.com/mig.capable": "false", "feature.node.kubernetes.io/pci-10de.present": "true",
    }  # fmt: skip
    capacity = {"cpu": "128", "memory": "1024Gi", "pods": "110", "ephemeral-storage": "3500Gi", "nvidia.com/gpu": "8"}
    condition_kinds = [("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                       ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has enough memory"),
                       ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                       ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                       ("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route")]  # fmt: skip
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {
            "name": name, "uid": str(uuid.UUID(int=index)), "resourceVersion": str(100000 + index),
            "creationTimestamp": STAMP, "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0",
                            "nfd.node.kubernetes.io/feature-labels": "pci-10de.present"},
            "managedFields": [
                {"manager": "OpenAPI-Generator", "operation": "Update", "apiVersion": "v1", "time": STAMP,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {
                     "f:annotations": {".": {}, "f:kwok.x-k8s.io/node": {}},
                 "f:labels": {".": {}, **{f"f:{k}": {} for k in labels}}}, "f:spec": {"f:taints": {}}}},
                {"manager": "kwok", "operation": "Update", "apiVersion": "v1", "time": STAMP, "fieldsType": "FieldsV1",
                 "subresource": "status", "fieldsV1": {"f:status": {"f:allocatable": {f"f:{k}": {} for k in capacity},
                 "f:capacity": {f"f:{k}": {} for k in capacity}, "f:conditions": {
                     f'k:{{"type":"{c[0]}"}}': {".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                                                "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}
                     for c in condition_kinds}, "f:daemonEndpoints": {"f:kubeletEndpoint": {"f:Port": {}}},
                     "f:nodeInfo": {"f:architecture": {}, "f:kubeletVersion": {}}}}},
            ],
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity | {"cpu": "126", "memory": "1032192Mi", "ephemeral-storage": "3400Gi"},
            "conditions": [{"type": t, "status": s, "lastHeartbeatTime": STAMP, "lastTransitionTime": STAMP,
                            "reason": r, "message": m} for t, s, r, m in condition_kinds],
            "addresses": [{"type": "InternalIP", "address": f"10.{index // 250}.{index % 250}.1"},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": uuid.UUID(int=index).hex, "systemUUID": str(uuid.UUID(int=index)),
                         "bootID": uuid.UUID(int=index + 1).hex, "kernelVersion": "5.15.0-105-generic",
                         "osImage": "Ubuntu 22.04.4 LTS", "containerRuntimeVersion": "containerd://1.7.13",
                         "kubeletVersion": "fake", "kubeProxyVersion": "fake", "operatingSystem": "linux",
                         "architecture": "amd64"},
            "images": [{"names": [f"registry.example/team{i}/image@sha256:{uuid.UUID(int=i).hex * 2}",
                                  f"registry.example/team{i}/image:v{i}"], "sizeBytes": 1_000_000_000 + i}
                       for i in range(12)],
        },
    }  # fmt: skip


def pod_object(index: int, node: str, devices: int, dsd: int | None) -> dict[str, Any]:
    """A pod of a Deployment as the API server returns it, bound and running; ``dsd``: one of dspool's."""
    name = f"w-{index:06d}-7f9c6d5b8-x{index % 97:02d}q"
    labels = {"app": "inference" if devices else "agent", "pod-template-hash": "7f9c6d5b8", "team": f"t{index % 20}"}
    if dsd is not None:
        labels = {"dspool.io/deployment": f"d{dsd:05d}", "dspool.io/replica": str(index % 2),
                  "dspool.io/placement": f"{dsd:08x}", "app.kubernetes.io/managed-by": "dspool",
                  "app.kubernetes.io/name": "vllm", "pod-template-hash": "7f9c6d5b8"}  # fmt: skip
    ip = f"10.244.{index // 250 % 250}.{index % 250}"
    limits = {"cpu": "8", "memory": "64Gi", **({"nvidia.com/gpu": str(devices)} if devices else {})}
    kinds = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    conditions = [(t, STAMP) for t in kinds]
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "generateName": name[:-5], "namespace": "serving" if dsd is None else "bench-dspool",
            "uid": str(uuid.UUID(int=10**6 + index)), "resourceVersion": str(200000 + index),
            "creationTimestamp": STAMP,
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": STAMP, "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name[:-6],
                                 "uid": str(uuid.UUID(int=index)), "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": STAMP,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {
                     ".": {}, **{f"f:{k}": {} for k in labels}},
                     "f:ownerReferences": {".": {}, f'k:{{"uid":"{index}"}}': {}}},
                     "f:spec": {"f:containers": {'k:{"name":"main"}': {
                     ".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {},
                     "f:readinessProbe": {}, "f:resources": {},
                     "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}}, "f:dnsPolicy": {},
                     "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                     "f:terminationGracePeriodSeconds": {}, "f:tolerations": {}}}},
                {"manager": "kwok", "operation": "Update", "apiVersion": "v1", "time": STAMP, "fieldsType": "FieldsV1",
                 "subresource": "status", "fieldsV1": {"f:status": {"f:conditions": {
                     f'k:{{"type":"{t}"}}': {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {},
                                            "f:type": {}} for t, _ in conditions}, "f:containerStatuses": {},
                     "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {},
                     "f:startTime": {}}}},
            ],
        },
        "spec": pod_spec(index, node, limits),
        "status": {
            "phase": "Running",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": s}
                           for t, s in conditions],
            "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}], "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": STAMP,
            "containerStatuses": [{"name": "main", "state": {"running": {"startedAt": STAMP}}, "lastState": {},
                                   "ready": True, "restartCount": 0, "image": "registry.example/app:1.2.3",
                                   "imageID": "registry.example/app@sha256:" + "ab" * 32,
                                   "containerID": f"containerd://{uuid.UUID(int=index).hex * 2}", "started": True}],
            "qosClass": "Guaranteed",
        },
    }  # fmt: skip


def pod_spec(index: int, node: str, limits: dict[str, str]) -> dict[str, Any]:
    """A pod's spec as Deployments and admission leave it: a token volume, one container, tolerations."""
    return {
        "volumes": [{"name": f"kube-api-access-{index % 100000:05d}", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                           "fieldPath": "metadata.namespace"}}]}}],
            "defaultMode": 420}}],
        "containers": [{
            "name": "main", "image": "registry.example/app:1.2.3",
            "args": ["--port", "8000", "--model", "/models/m"],
            "env": [{"name": "MODE", "value": "serve"}, {"name": "INDEX", "value": str(index)},
                    {"name": "POD_IP",
                     "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
            "ports": [{"containerPort": 8000, "protocol": "TCP"}],
            "resources": {"limits": limits, "requests": limits},
            "volumeMounts": [{"name": f"kube-api-access-{index % 100000:05d}", "readOnly": True,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000, "scheme": "HTTP"}, "periodSeconds": 10,
                               "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node, "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300}],
        "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
    }  # fmt: skip


def dsd_object(index: int, node: str) -> dict[str, Any]:
    """A DSD with its status: two replicas placed."""
    return {
        "apiVersion": "dspool.io/v1alpha1", "kind": "DeepSeekDeployment",
        "metadata": {"name": f"d{index:05d}", "namespace": "bench-dspool", "uid": str(uuid.UUID(int=10**8 + index)),
                     "generation": 1, "creationTimestamp": STAMP, "resourceVersion": str(300000 + index),
                     "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                                        "fieldsV1": {"f:spec": {"f:model": {}, "f:replicas": {}}}}]},
        "spec": {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 2},
        "status": {
            "phase": "Ready", "observedGeneration": 1, "readyReplicas": 2,
            "placements": [{"replica": r, "accelerator": "L20-48G", "precision": "bf16", "backend": "vllm",
                            "tensorParallel": 1, "pipelineParallel": 1, "maxModelLen": 32768,
                            "specHash": f"{index:08x}", "nodes": [{"name": node, "devices": 1}]}
                           for r in range(2)],
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "Placed", "message": "placed",
                            "lastTransitionTime": STAMP, "observedGeneration": 1}],
        },
    }  # fmt: skip


def write_pages(path: Path, kind: str, objects: Iterator[dict[str, Any]]) -> None:
    """Objects as list pages (JSON bytes, as the API server sends them), length-prefixed in one file."""
    with path.open("wb") as out:
        batch: list[dict[str, Any]] = []
        for obj in objects:
            batch.append(obj)
            if len(batch) == PAGE:
                out.write(_page(kind, batch))
                batch = []
        if batch:
            out.write(_page(kind, batch))


def _page(kind: str, items: list[dict[str, Any]]) -> bytes:
    data = json.dumps({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1", "continue": "x"},
                       "items": items}, separators=(",", ":")).encode()  # fmt: skip
    return struct.pack("<I", len(data)) + data


def generate(folder: Path, nodes: int, pods: int, dsds: int, device_per_node: int, per_dsd: int) -> None:
    """Write the three kinds' pages once."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"l20-5000-{i:04d}" for i in range(nodes)]
    per_node = max(1, pods // nodes)
    dspool_pods = dsds * per_dsd

    def pod_stream() -> Iterator[dict[str, Any]]:
        device_index = 0
        for index in range(pods):
            node, slot = divmod(index, per_node)
            devices = 1 if slot < device_per_node else 0
            dsd = device_index // per_dsd if devices and device_index < dspool_pods else None
            device_index += devices
            yield pod_object(index, names[node % nodes], devices, dsd)

    write_pages(folder / "nodes", "NodeList", (node_object(i) for i in range(nodes)))
    write_pages(folder / "pods", "PodList", pod_stream())
    write_pages(folder / "dsds", "DeepSeekDeploymentList", (dsd_object(i, names[i % nodes]) for i in range(dsds)))


def read_pages(path: Path) -> Iterator[bytes]:
    """The pages of one kind, one at a time (as the informer receives them)."""
    with path.open("rb") as source:
        while header := source.read(4):
            yield source.read(struct.unpack("<I", header)[0])


# ------------------------------------------------------------------------------------ one arm, in a child


def _status_kib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return float(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


def _views_at(commit: str) -> Any:
    """``views.py`` as it was at ``commit``, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:operator/dspool/views.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = Path(f"/tmp/dspool-views-{commit}.py")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"views_{commit}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_arm(folder: Path, arm: str, against: str, traced: bool) -> dict[str, Any]:
    """Decode and compact every page, keep the views as the informer does, build the pool once."""
    import dspool.handlers  # noqa: F401  the operator's imports: its baseline memory
    from dspool import views as new_views
    from dspool.api import placements_from_status
    from dspool.catalog import load_catalog
    from dspool.inventory import build_pool, reservations_from_status
    from dspool.kube import decode

    catalog = load_catalog()
    views = _views_at(against) if arm == "old" else new_views
    if arm == "old":
        decoders = {kind: json.loads for kind in ("nodes", "pods", "dsds")}
    else:
        decoders = {"nodes": decode.NODES.page, "pods": decode.PODS.page, "dsds": decode.WHOLE.page}
    compact = {
        "nodes": lambda body: (body["metadata"]["name"], views.compact_node(body)),
        "pods": lambda body: (body["metadata"]["uid"], views.compact_pod(body)),
        "dsds": lambda body: (body["metadata"]["uid"], views.compact_deployment(body)),
    }
    baseline_kib = _status_kib("VmRSS")
    if traced:
        tracemalloc.start(1)
    started = time.perf_counter()
    kept: dict[str, dict[str, Any]] = {kind: {} for kind in compact}
    for kind in compact:
        for data in read_pages(folder / kind):
            page = decoders[kind](data)
            for item in page["items"]:
                key, view = compact[kind](item)
                if view is not None:
                    kept[kind][key] = view
            del page, data
    decoded_s = time.perf_counter() - started
    reservations = [
        reservation
        for body in kept["dsds"].values()
        for reservation in reservations_from_status(
            body["metadata"]["namespace"], body["metadata"]["name"], placements_from_status(body.get("status"))
        )
    ]
    pool = build_pool(list(kept["nodes"].values()), list(kept["pods"].values()), reservations, catalog)
    pool_s = time.perf_counter() - started - decoded_s
    figures: dict[str, Any] = {
        "arm": arm, "nodes": len(kept["nodes"]), "pods kept": len(kept["pods"]), "dsds": len(kept["dsds"]),
        "used devices": sum(n.used for n in pool.nodes.values()),
        "reserved devices": sum(n.reserved for n in pool.nodes.values()),
    }  # fmt: skip
    if traced:
        figures |= traced_figures()
    else:
        figures["decode+compact s"], figures["pool s"] = decoded_s, pool_s  # untraced: tracemalloc slows it
        figures["baseline RSS MiB"] = baseline_kib / 1024
        figures["peak RSS MiB"] = _status_kib("VmHWM") / 1024
    return figures


def traced_figures() -> dict[str, Any]:
    """What tracemalloc saw: the peak, what is held now, and the top five sites of what is held."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    current, peak = tracemalloc.get_traced_memory()
    top = [
        f"{stat.size / 2**20:6.1f} MiB {stat.count:>8} blocks  "
        f"{Path(stat.traceback[0].filename).name}:{stat.traceback[0].lineno}  "
        f"{_line(stat.traceback[0].filename, stat.traceback[0].lineno)}"
        for stat in snapshot.statistics("lineno")[:5]
    ]
    return {"traced held MiB": current / 2**20, "traced peak MiB": peak / 2**20, "top": top}


def _line(filename: str, lineno: int) -> str:
    try:
        return Path(filename).read_text().splitlines()[lineno - 1].strip()[:70]
    except (OSError, IndexError):
        return ""


# ------------------------------------------------------------------------------------ the comparison


def main() -> int:
    """Generate the pages once, run each arm in fresh processes, print the figures side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=50000)
    parser.add_argument("--dsds", type=int, default=200)
    parser.add_argument("--device-pods-per-node", type=int, default=6)
    parser.add_argument("--dspool-pods-per-dsd", type=int, default=2)
    parser.add_argument("--against", default=BASE_COMMIT, help="the commit whose views.py the old arm runs")
    parser.add_argument("--arms", nargs="+", default=["old", "new"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(f"/tmp/dspool-memory-{args.nodes}-{args.pods}-{args.dsds}-{args.device_pods_per_node}")
    if args.child:
        print(json.dumps(run_arm(folder, args.child, args.against, args.traced)))
        return 0
    if not (folder / "dsds").exists():
        started = time.monotonic()
        generate(folder, args.nodes, args.pods, args.dsds, args.device_pods_per_node, args.dspool_pods_per_dsd)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MiB" for p in sorted(folder.iterdir()))
        print(f"generated in {time.monotonic() - started:.0f} s: {sizes}")
    rows = []
    for arm in args.arms:
        row: dict[str, Any] = {}
        for traced in (False, True):
            command = [sys.executable, __file__, "--child", arm, "--against", args.against,
                       "--nodes", str(args.nodes), "--pods", str(args.pods), "--dsds", str(args.dsds),
                       "--device-pods-per-node", str(args.device_pods_per_node)]  # fmt: skip
            command += ["--traced"] if traced else []
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
            row = json.loads(output.strip().splitlines()[-1]) | row  # the untraced run's timings win
        rows.append(row)
    print_rows(rows)
    return 0


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The figures side by side, then each arm's top five allocation sites of what it holds."""
    keys = ["arm", "nodes", "pods kept", "dsds", "baseline RSS MiB", "peak RSS MiB", "traced peak MiB",
            "traced held MiB", "decode+compact s", "pool s", "used devices", "reserved devices"]  # fmt: skip
    print("  ".join(keys))
    for row in rows:
        cells = [f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        print("  ".join(f"{c:>{len(k)}}" for k, c in zip(keys, cells, strict=True)))
    for row in rows:
        print(f"\n{row['arm']}: top five allocation sites of what the views hold")
        print("\n".join(row["top"]))


if __name__ == "__main__":
    sys.exit(main())
