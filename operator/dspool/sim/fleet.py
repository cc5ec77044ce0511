"""Simulated accelerator pools: a short YAML file becomes fake GPU/NPU nodes in a real API server.

A pool file lists node groups::

    name: small                      # value of the dspool.io/pool label on every node
    labels: {dspool.io/site: lab}    # optional, on every node
    groups:
      - name: h200                   # node names: <namePrefix><name>-<index>
        count: 2
        accelerator: H200-141G       # an accelerator id from dspool.catalog
        devicesPerNode: 8            # optional; default is the catalog's server size
        labels: {dspool.io/fabric: rack-a}
        taints: []                   # optional; default is the vendor's device taint
        modelCacheGiB: 4096          # optional: the node model cache (label dspool.io/model-cache-gib);
                                     # default DEFAULT_MODEL_CACHE_GIB (dspool.weights.state)

Every node is a plain ``v1.Node`` annotated ``kwok.x-k8s.io/node: fake`` so that kwok (started by
``e2e/cluster.py``) keeps it Ready and runs the pods bound to it. The labels come from the catalog
(``AcceleratorSpec.node_labels``), so placement code sees exactly what GPU Feature Discovery or the
Ascend device plugin would publish; the device count is the extended resource in capacity and
allocatable, as a device plugin would advertise it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from dspool.catalog import AcceleratorSpec, Catalog, Vendor, load_catalog
from dspool.weights.state import MODEL_CACHE_CAPACITY_LABEL

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
POOL_LABEL = "dspool.io/pool"
GROUP_LABEL = "dspool.io/node-group"
PODS_PER_NODE = 110
# Node names double as the kubernetes.io/hostname label value, which is limited to 63 characters.
MAX_NODE_NAME = 63
# Labels a real kubelet sets about its own machine; adopt_nodes leaves them alone.
KUBELET_OWNED_LABELS = ("kubernetes.io/hostname", "kubernetes.io/arch", "kubernetes.io/os")
APPLY_WORKERS = 8  # the client keeps 10 connections per pool on 2 cores

# Device taints that keep ordinary pods off accelerator nodes, as operators of real clusters set them.
# Workloads that want the devices tolerate "<resource>" with operator Exists (or Equal "present").
NVIDIA_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def default_taints(accelerator: AcceleratorSpec) -> list[dict[str, str]]:
    """Return the usual device taint: ``nvidia.com/gpu=present:NoSchedule`` or the Ascend equivalent.

    Ascend nodes are tainted with their own resource name, e.g. ``huawei.com/Ascend910=present:NoSchedule``.
    """
    if accelerator.vendor == Vendor.NVIDIA:
        return [dict(NVIDIA_TAINT)]
    return [{"key": accelerator.resource_name, "value": "present", "effect": "NoSchedule"}]


class _PoolModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Taint(_PoolModel):
    """A node taint, as in ``v1.Taint``."""

    key: str
    value: str = ""
    effect: str = Field(pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")


class NodeGroup(_PoolModel):
    """Identical nodes: one accelerator kind, one device count, shared labels and taints."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=50)
    count: int = Field(ge=0, le=20000)
    accelerator: str
    devices_per_node: int | None = Field(default=None, ge=1, le=64)
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] | None = Field(default=None, description="None means the vendor's device taint")
    cpu: int | None = Field(default=None, ge=1, description="CPU cores; default from the host profile")
    memory_gib: int | None = Field(default=None, ge=1, alias="memoryGiB")
    model_cache_gib: float | None = Field(
        default=None, ge=0, alias="modelCacheGiB", description="model cache capacity; None: the default"
    )


class PoolFile(_PoolModel):
    """A pool file: a named set of node groups (``dspool.inventory.Pool`` is the pool dspool accounts)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    name_prefix: str = Field(default="", pattern=r"^([a-z0-9][-a-z0-9]*)?$", max_length=40)
    labels: dict[str, str] = Field(default_factory=dict)
    groups: list[NodeGroup]

    @model_validator(mode="after")
    def _check_node_names(self) -> PoolFile:
        for group in self.groups:
            longest = node_name(self, group, max(group.count - 1, 0))
            if len(longest) > MAX_NODE_NAME:
                raise ValueError(f"node name {longest!r} is longer than {MAX_NODE_NAME} characters")
        return self

    @property
    def node_count(self) -> int:
        """How many nodes the pool has."""
        return sum(group.count for group in self.groups)


@dataclass(frozen=True)
class PoolHandle:
    """A pool as it exists in a cluster: its ``dspool.io/pool`` label value and its node names."""

    name: str
    node_names: list[str]

    @property
    def selector(self) -> str:
        """Label selector matching exactly this pool's nodes."""
        return f"{POOL_LABEL}={self.name}"


def load_pool(path: str | Path) -> PoolFile:
    """Read and validate a pool file."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a pool file is a mapping with `name` and `groups`")
    return PoolFile.model_validate(data)


def host_profile(accelerator: AcceleratorSpec, devices: int) -> tuple[int, int]:
    """Return (CPU cores, memory GiB) of a typical server carrying `devices` of this accelerator.

    Per device: an HGX/DGX-class server (80 GB-class parts and up) gives 28 cores and 256 GiB (8 GPUs:
    224 cores, 2 TiB); smaller PCIe cards 16 cores and 128 GiB; an Atlas 800 A2 (4x Kunpeng 920)
    24 cores and 128 GiB.
    """
    if accelerator.vendor == Vendor.ASCEND:
        cores, memory = 24, 128
    elif accelerator.memory_gib >= 80:
        cores, memory = 28, 256
    else:
        cores, memory = 16, 128
    return max(16, cores * devices), max(64, memory * devices)


def node_name(pool: PoolFile, group: NodeGroup, index: int) -> str:
    """Return the name of the index-th node of a group."""
    return f"{pool.name_prefix}{group.name}-{index:03d}"


def node_manifests(pool: PoolFile, catalog: Catalog | None = None) -> list[dict[str, Any]]:
    """Return the ``v1.Node`` objects of a pool, with status; pure apart from reading the catalog."""
    catalog = catalog or load_catalog()
    nodes = []
    for group in pool.groups:
        accelerator = catalog.accelerator(group.accelerator)
        for index in range(group.count):
            nodes.append(_node_manifest(pool, group, accelerator, node_name(pool, group, index)))
    return nodes


def _node_manifest(pool: PoolFile, group: NodeGroup, accelerator: AcceleratorSpec, name: str) -> dict[str, Any]:
    devices = group.devices_per_node or accelerator.devices_per_node
    default_cores, default_memory = host_profile(accelerator, devices)
    cores = group.cpu or default_cores
    memory_gib = group.memory_gib or default_memory
    arch = "arm64" if accelerator.vendor == Vendor.ASCEND else "amd64"
    labels = {
        **pool.labels,
        **accelerator.node_labels(devices),
        **group.labels,
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        POOL_LABEL: pool.name,
        GROUP_LABEL: group.name,
    }
    if group.model_cache_gib is not None:
        labels[MODEL_CACHE_CAPACITY_LABEL] = f"{group.model_cache_gib:g}"
    taints = default_taints(accelerator) if group.taints is None else [t.model_dump() for t in group.taints]
    capacity = {
        "cpu": str(cores),
        "memory": f"{memory_gib}Gi",
        "pods": str(PODS_PER_NODE),
        "ephemeral-storage": "3500Gi",
        accelerator.resource_name: str(devices),
    }
    # What a kubelet reserves for the system: a core or two and a few GiB.
    allocatable = capacity | {
        "cpu": f"{cores * 1000 - min(2000, cores * 50)}m",
        "memory": f"{memory_gib * 1024 - min(16384, memory_gib * 40)}Mi",
        "ephemeral-storage": "3400Gi",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "nodeInfo": {
                "architecture": arch,
                "operatingSystem": "linux",
                "osImage": "Ubuntu 22.04.4 LTS" if arch == "amd64" else "openEuler 22.03 (LTS-SP4)",
                "kubeletVersion": "fake",
            },
        },
    }
