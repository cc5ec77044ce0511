"""Apply a simulated pool to a cluster (the I/O half of :mod:`dspool.sim.fleet`): create, patch, delete or
dress nodes through a ``kubernetes.client.CoreV1Api``, and install dspool's CRD. Used by the tests,
``e2e/fleet.py``, the demo and the benchmarks."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dspool.catalog import Catalog
from dspool.sim.fleet import APPLY_WORKERS, KUBELET_OWNED_LABELS, PoolFile, node_manifests


def _status_resources(node: dict[str, Any]) -> dict[str, Any]:
    status = node.get("status") or {}
    return {key: status.get(key) for key in ("capacity", "allocatable")}


def apply_pool(core_v1_api: Any, pool: PoolFile, catalog: Catalog | None = None) -> int:
    """Create the pool's nodes, or bring existing ones to the manifest; return how many.

    `core_v1_api` is a ``kubernetes.client.CoreV1Api``. Requests run on a thread pool and skip
    response decoding, so 1,000 nodes take seconds rather than minutes.
    """
    from kubernetes.client.exceptions import ApiException

    def apply_node(node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        try:
            response = core_v1_api.create_node(node, _preload_content=False)
            # A new Node keeps the status it was created with; nothing more to do when it did.
            if _status_resources(json.loads(response.data)) == _status_resources(node):
                return
        except ApiException as error:
            if error.status != 409:
                raise
            core_v1_api.patch_node(name, {"metadata": node["metadata"], "spec": node["spec"]}, _preload_content=False)
        core_v1_api.patch_node_status(name, {"status": _status_resources(node)}, _preload_content=False)

    nodes = node_manifests(pool, catalog)
    with ThreadPoolExecutor(max_workers=APPLY_WORKERS) as executor:
        list(executor.map(apply_node, nodes))
    return len(nodes)


def delete_pool(core_v1_api: Any, pool: PoolFile, catalog: Catalog | None = None) -> int:
    """Delete the pool's nodes (ones already gone are skipped); return how many were deleted."""
    from kubernetes.client.exceptions import ApiException

    def delete_node(node: dict[str, Any]) -> bool:
        try:
            core_v1_api.delete_node(node["metadata"]["name"], _preload_content=False)
        except ApiException as error:
            if error.status != 404:
                raise
            return False
        return True

    with ThreadPoolExecutor(max_workers=APPLY_WORKERS) as executor:
        return sum(executor.map(delete_node, node_manifests(pool, catalog)))


def adopt_nodes(core_v1_api: Any, pool: PoolFile, node_names: list[str], catalog: Catalog | None = None) -> None:
    """Dress existing (real, e.g. kind) nodes as the pool's first nodes instead of creating fake ones.

    Each node gets the accelerator labels, taints and extended resource of the pool node in the same
    position; its real hostname, CPU and memory stay. Used where no kwok runs (``e2e/kind``).
    """
    manifests = node_manifests(pool, catalog)
    if len(node_names) > len(manifests):
        raise ValueError(f"pool {pool.name} has {len(manifests)} nodes; cannot dress {len(node_names)}")
    for name, manifest in zip(node_names, manifests, strict=False):
        labels = {
            key: value
            for key, value in manifest["metadata"]["labels"].items()
            if key not in KUBELET_OWNED_LABELS and key != "type"  # type=kwok marks fake nodes
        }
        core_v1_api.patch_node(name, {"metadata": {"labels": labels}, "spec": manifest["spec"]})
        extended = {
            key: value
            for key, value in manifest["status"]["capacity"].items()
            if key.startswith(("nvidia.com/", "huawei.com/"))
        }
        core_v1_api.patch_node_status(name, {"status": {"capacity": extended, "allocatable": extended}})


def install_crd(api_client: Any, timeout: float = 60.0) -> None:
    """Create or update the DeepSeekDeployment CRD from code (``kubernetes.client.ApiClient``) and wait until
    it is Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from dspool.crdgen import build_crd

    ext = client.ApiextensionsV1Api(api_client)
    crd = build_crd()
    name = crd["metadata"]["name"]
    try:
        current = ext.read_custom_resource_definition(name)
        crd["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, crd)
    except ApiException as exc:
        if exc.status != 404:
            raise
        ext.create_custom_resource_definition(crd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.25)
    raise TimeoutError(f"the CRD {name} did not become Established within {timeout:.0f}s")
