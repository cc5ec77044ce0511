"""The operator's start-up on the real control plane: N nodes, M pods, then `dspool run` until its first pass.

    python bench/startup.py --nodes 5000 --pods 50000 --populate          # apply the pool and the pods once
    python bench/startup.py --nodes 5000 --variants old new --runs 2      # start the operator, side by side
    python bench/startup.py --nodes 5000 --breakdown                      # where a list's time goes
    python bench/startup.py --nodes 5000 --pods 50000 --cleanup           # delete the pods and the pool

The pool is N fake L20 servers (8 GPUs each, KWOK); the pods are plain pods bound by name
(``spec.nodeName``, no scheduler), ``--device-pods-per-node`` of them asking for one GPU each and the rest
CPU-only (as daemon sets and sidecars are), spread evenly over the nodes, so a node keeps free GPUs.

Each run starts a fresh ``dspool run`` (its own Lease, no DSD) and reads from its log when its watches had
synced and its first pass was done ("... s after start", counted from the runtime's creation, after the
imports), the bench's own wall time from launch to the first pass (imports and kopf included), the peak
RSS (``VmHWM``) and the CPU seconds the process used until then. Variants (``--variants``), run
alternately so that the machine's load falls on both alike:

- ``old``: the operator as committed (the informer's own ``json.loads``, pages of 500, consistent reads);
- ``new``: the informer's first list served from the API server's watch cache (``resourceVersion=0``,
  one request: the cache ignores ``limit`` there) and decoded by :func:`dspool.kube.decode.loads`; applied
  here by patching the informer module in the operator's process (the merge changes ``informer.py`` itself).

``--breakdown`` lists nodes and pods the way the informer does, in this process, and times each part
apart: the API server and HTTP (bytes received), JSON decoding, compaction, for pages of 500 with
consistent reads and for one watch-cache read.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

from dspool.sim.apply import apply_pool, delete_pool
from dspool.sim.fleet import NodeGroup, PoolFile, node_name

REPO = Path(__file__).resolve().parent.parent
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
NAMESPACE = "bench-startup"
CREATORS = 16


def pool_of(nodes: int) -> PoolFile:
    """The fake pool: N L20 servers."""
    group = NodeGroup(name=f"l20-{nodes}", count=nodes, accelerator="L20-48G")
    return PoolFile(name=f"startup-{nodes}", groups=[group])


def bench_pod(index: int, node: str, devices: int) -> dict[str, Any]:
    """A pod as a user's workload looks: labels, an image, env, probes; bound by name to ``node``."""
    limits = {"cpu": "2", "memory": "8Gi", **({"nvidia.com/gpu": str(devices)} if devices else {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"w-{index:06d}",
            "labels": {"app": "inference" if devices else "agent", "team": f"t{index % 20}", "bench": "startup"},
        },
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "main", "image": "registry.example/app:1.2.3",
                "env": [{"name": "MODE", "value": "serve"}, {"name": "INDEX", "value": str(index)}],
                "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                "resources": {"limits": limits, "requests": limits},
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
            }],
        },
    }  # fmt: skip


def populate(core: client.CoreV1Api, nodes: int, pods: int, device_pods_per_node: int) -> None:
    """Apply the pool and create the pods that are missing (idempotent: re-running adds only what is absent)."""
    started = time.monotonic()
    pool = pool_of(nodes)
    apply_pool(core, pool)
    print(f"pool of {nodes} nodes applied in {time.monotonic() - started:.0f} s", flush=True)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    existing = {p.metadata.name for p in core.list_namespaced_pod(NAMESPACE, _request_timeout=600).items}
    per_node = max(1, pods // nodes)
    group = pool.groups[0]

    def create(index: int) -> None:
        name = f"w-{index:06d}"
        if name in existing:
            return
        node, slot = divmod(index, per_node)
        body = bench_pod(index, node_name(pool, group, node % nodes), 1 if slot < device_pods_per_node else 0)
        try:
            core.create_namespaced_pod(NAMESPACE, body, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CREATORS) as executor:
        for done, _ in enumerate(executor.map(create, range(pods)), 1):
            if done % 5000 == 0:
                print(f"  {done} pods ({time.monotonic() - started:.0f} s)", flush=True)
    print(f"{pods} pods present ({pods - len(existing)} created in {time.monotonic() - started:.0f} s)", flush=True)


def cleanup(core: client.CoreV1Api, nodes: int) -> None:
    """Delete the pods' namespace and the pool."""
    try:
        core.delete_namespace(NAMESPACE, grace_period_seconds=0)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    delete_pool(core, pool_of(nodes))


def main() -> int:
    """Populate, measure or clean up, as the flags say."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=50000)
    parser.add_argument("--device-pods-per-node", type=int, default=6)
    parser.add_argument("--populate", action="store_true")
    parser.add_argument("--cleanup", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(KUBECONFIG)))
    if args.populate:
        populate(core, args.nodes, args.pods, args.device_pods_per_node)
    if args.cleanup:
        cleanup(core, args.nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
