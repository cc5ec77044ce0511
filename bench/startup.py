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
- ``new``: the pages and watch events decoded by :func:`dspool.kube.decode.for_informer` (nodes and pods
  to the fields dspool reads), with this tree's compaction; applied here by patching the informer module
  in the operator's process (the merge changes ``informer.py`` itself);
- ``rv0``: ``new``, and the first list served as ``resourceVersion=0`` ("Any": from the watch cache, where
  ``limit`` is ignored, so each kind comes in one response).

``--breakdown`` lists nodes and pods the way the informer does, in this process, and times each part
apart: the API server and HTTP (bytes received), JSON decoding, compaction, for pages of 500 with
consistent reads and for one watch-cache read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

from dspool.sim.apply import apply_pool, delete_pool, install_crd
from dspool.sim.fleet import POOL_LABEL, NodeGroup, PoolFile, node_name

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
    install_crd(core.api_client)  # the operator watches DSDs: nothing is decided before they are listed
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


# ------------------------------------------------------------------------------------ the operator's start


def patch_informer(variant: str) -> None:
    """In the operator's process: make the informer list and decode as ``variant`` says (``old``: as is).

    ``new`` is the change ``informer.py`` gets at the merge: pages and watch events decoded by
    :func:`dspool.kube.decode.for_informer`; ``rv0`` also lists from the watch cache (``resourceVersion=0``).
    """
    if variant == "old":  # the compaction too, as it was (runtime calls the names it imported)
        from dspool.kube import runtime
        from memory import BASE_COMMIT, _views_at

        old = _views_at(BASE_COMMIT)
        runtime.compact_node, runtime.compact_pod = old.compact_node, old.compact_pod  # type: ignore[attr-defined]
        return
    from dspool.kube import decode, informer

    def _list(self: informer.Informer) -> None:
        decoder = decode.for_informer(self.name)
        fresh: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": informer.PAGE_SIZE, "_preload_content": False, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            elif variant == "rv0":
                kwargs["resource_version"] = "0"  # "Any": the watch cache, which ignores limit (one response)
            page = decoder.page(self.list_call(**kwargs).data)
            for item in page.get("items") or []:
                key, view = self.compact(item)
                if view is not None:
                    fresh[key] = view
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                self._resource_version = metadata.get("resourceVersion", "")
                break
        with self._lock:
            changed = fresh != self._items
            self._items = fresh
        self.synced.set()
        if changed:
            self.on_change()

    informer.Informer._list = _list  # type: ignore[method-assign]
    informer.json = types.SimpleNamespace(loads=decode.loads)  # type: ignore[assignment]  # watch events


def operator_main(variant: str, argv: list[str]) -> int:
    """``dspool run`` with the informer patched as ``variant`` says (runs in the operator's process)."""
    patch_informer(variant)
    from dspool.cli import main as dspool_main

    return dspool_main(argv)


def _proc(pid: int) -> tuple[float, float]:
    """Peak RSS (MiB) and CPU seconds of a process so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = float(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024  # type: ignore[union-attr]
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return peak, (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def start_operator(nodes: int, variant: str, timeout: float) -> dict[str, Any]:
    """Start ``dspool run`` on the pool, wait for its first pass, stop it; the figures of its start."""
    log_path = Path(tempfile.mkdtemp()) / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    lease = f"bench-startup-{uuid.uuid4().hex[:5]}"
    argv = ["run", "--node-selector", f"{POOL_LABEL}={pool_of(nodes).name}", "--namespace", NAMESPACE,
            "--liveness-port", "0", "--metrics-port", "0", "--no-node-metrics", "--lease-name", lease,
            "--rebalance", "off"]  # fmt: skip
    launched = time.monotonic()
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [sys.executable, __file__, "--operator", variant, "--", *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        while "first pass done" not in (text := log_path.read_text()):
            if operator.poll() is not None or time.monotonic() - launched > timeout:
                raise RuntimeError(f"the operator did not start:\n{text[-3000:]}")
            time.sleep(0.05)
        wall = time.monotonic() - launched
        peak, cpu = _proc(operator.pid)
    finally:
        operator.terminate()
        operator.wait(timeout=60)
    synced = float(re.search(r"watches synced ([\d.]+) s", text).group(1))  # type: ignore[union-attr]
    first = float(re.search(r"first pass done ([\d.]+) s", text).group(1))  # type: ignore[union-attr]
    return {"variant": variant, "synced s": synced, "first pass s": first, "launch to first pass s": wall,
            "peak RSS MiB": peak, "CPU s": cpu}  # fmt: skip


# ------------------------------------------------------------------------------------ where a list's time goes


def breakdown(core: client.CoreV1Api, nodes: int) -> None:
    """List nodes and pods as the informer does, timing the server + HTTP, the decoding, the compaction."""
    from dspool import views
    from dspool.kube import decode

    selector = f"{POOL_LABEL}={pool_of(nodes).name}"
    kinds = {
        "nodes": (core.list_node, decode.NODES, views.compact_node),
        "pods": (core.list_pod_for_all_namespaces, decode.PODS, views.compact_pod),
    }
    modes = {"paged, consistent": {"limit": 500}, "paged, rv=0": {"limit": 500, "resource_version": "0"},
             "one request, rv=0": {"resource_version": "0"}, "one request, consistent": {}}  # fmt: skip
    header = ["kind", "mode", "pages", "MiB", "server+HTTP s", "json.loads s", "msgspec schema s", "compact s"]
    print("  ".join(header))
    for kind, (list_call, decoder, compact) in kinds.items():
        for mode, options in modes.items():
            pages: list[bytes] = []
            token = None
            started = time.perf_counter()
            try:
                while True:
                    kwargs: dict[str, Any] = {**options, "_preload_content": False, "_request_timeout": 300}
                    if token:
                        kwargs["_continue"] = token
                        kwargs.pop("resource_version", None)
                    data = list_call(**kwargs).data
                    pages.append(data)
                    token = (decode.loads(data).get("metadata") or {}).get("continue")
                    if not token:
                        break
            except Exception as exc:  # a response cut by the server's request timeout: say so, go on
                print(f"{kind:>4}  {mode}: failed after {time.perf_counter() - started:.1f} s: {exc!r:.150}")
                continue
            fetched = time.perf_counter() - started
            started = time.perf_counter()
            for data in pages:
                json.loads(data)
            plain = time.perf_counter() - started
            started = time.perf_counter()
            decoded = [decoder.page(data) for data in pages]
            schema = time.perf_counter() - started
            started = time.perf_counter()
            for page in decoded:
                for item in page["items"]:
                    if kind == "nodes" and item["metadata"].get("labels", {}).get(POOL_LABEL) != selector.split("=")[1]:
                        continue
                    compact(item)
            compacted = time.perf_counter() - started
            size = sum(len(p) for p in pages) / 2**20
            cells = [kind, mode, str(len(pages)), f"{size:.1f}", f"{fetched:.2f}", f"{plain:.2f}", f"{schema:.2f}",
                     f"{compacted:.2f}"]  # fmt: skip
            print("  ".join(f"{c:>{len(h)}}" for h, c in zip(header, cells, strict=True)), flush=True)
            del pages, decoded
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dspool.handlers, dspool.kube.runtime"], check=True)
    took = time.perf_counter() - started
    print(f"importing the operator (dspool.handlers, kube.runtime) in a fresh process: {took:.2f} s")


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
    parser.add_argument("--operator", help=argparse.SUPPRESS)  # in the operator's process: the variant
    args = parser.parse_args(sys.argv[1 : sys.argv.index("--")] if "--" in sys.argv else None)
    if args.operator:
        return operator_main(args.operator, sys.argv[sys.argv.index("--") + 1 :])
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(KUBECONFIG)))
    if args.populate:
        populate(core, args.nodes, args.pods, args.device_pods_per_node)
    if args.breakdown:
        breakdown(core, args.nodes)
    rows = [start_operator(args.nodes, variant, args.timeout) for _ in range(args.runs) for variant in args.variants]
    if rows:
        keys = list(rows[0])
        print("  ".join(keys))
        for row in rows:
            cells = [f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
            print("  ".join(f"{c:>{len(k)}}" for k, c in zip(keys, cells, strict=True)), flush=True)
    if args.cleanup:
        cleanup(core, args.nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
