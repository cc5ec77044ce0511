"""The pool from what the watches hold: ``v1.Node`` and ``v1.Pod`` as the API server returns them (camelCase keys)
and dspool's own reservations (``status.placements`` of every DeepSeekDeployment). Pure; no API calls.

Which nodes are managed (:func:`node_from_k8s`), what a pod holds (:func:`pod_device_requests`, counted the
way the scheduler counts), and :func:`build_pool`, which applies the accounting rule of
:mod:`dspool.inventory.pool`. A dspool pod (labels ``dspool.io/deployment`` and ``dspool.io/replica``) on node
N is covered when its namespace/name, replica index and N match a reservation, so a replica is counted once
before and after its pod is bound.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache
from typing import Any

from dspool.api import DEPLOYMENT_LABEL, REPLICA_LABEL, ReplicaPlacement, deployment_label_value
from dspool.catalog import Catalog, reported_memory_mib
from dspool.inventory.pool import NodeState, Pool, Reservation

DEFAULT_FABRIC_LABEL = "dspool.io/fabric"
UNHEALTHY_TAINT_KEYS = frozenset({"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"})
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
MIB_PER_GIB = 1024


def _count(value: Any) -> int:
    """An extended-resource quantity as an integer device count (malformed -> 0)."""
    if value is None:
        return 0
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return 0
    return int(number) if number.is_integer() else 0


def _is_ready(node: Mapping[str, Any]) -> bool:
    for condition in node.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            status: object = condition.get("status")
            return status == "True"
    return False


def _is_unhealthy_taint(taint: Mapping[str, Any]) -> bool:
    return taint.get("key") in UNHEALTHY_TAINT_KEYS and taint.get("effect") in BLOCKING_EFFECTS


def node_from_k8s(
    node: Mapping[str, Any], catalog: Catalog, fabric_label: str = DEFAULT_FABRIC_LABEL
) -> NodeState | None:
    """The managed view of a ``v1.Node``, or None when dspool must not place on it.

    None unless the node is Ready, schedulable (not cordoned), free of the unreachable/not-ready
    NoSchedule/NoExecute taints, carries an accelerator the catalog identifies from its labels, and
    advertises at least one device of that accelerator's extended resource as allocatable. Device
    memory is what the node reports (:func:`dspool.catalog.reported_memory_mib`: GFD's ``nvidia.com/gpu.memory``,
    MindCluster's ``mind-cluster/npu-chip-memory`` or the site's ``dspool.io/device-memory-gib``), else the catalog's.
    """
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels: dict[str, str] = dict(metadata.get("labels") or {})
    taints: list[dict[str, Any]] = [dict(t) for t in spec.get("taints") or []]
    if not _is_ready(node) or spec.get("unschedulable") or any(_is_unhealthy_taint(t) for t in taints):
        return None
    accelerator = catalog.identify_node(labels)
    if accelerator is None:
        return None
    allocatable = _count((status.get("allocatable") or {}).get(accelerator.resource_name))
    if allocatable <= 0:
        return None
    memory_mib = reported_memory_mib(labels)
    device_memory_gib = memory_mib / MIB_PER_GIB if memory_mib else accelerator.memory_gib
    return NodeState(
        name=str(metadata.get("name", "")),
        accelerator=accelerator.id,
        vendor=accelerator.vendor,
        resource_name=accelerator.resource_name,
        device_memory_gib=device_memory_gib,
        allocatable=allocatable,
        fabric=labels.get(fabric_label) or None,
        labels=labels,
        taints=taints,
    )


@lru_cache(maxsize=1024)  # a cluster has a few resource names; every pod of every pass asks
def _is_extended_resource(name: str) -> bool:
    """Extended resources are domain-prefixed names outside kubernetes.io (e.g. nvidia.com/gpu)."""
    if "/" not in name:
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io") or domain == "requests")


def _container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    counts: dict[str, int] = {}
    for name in {*requests, *limits}:
        if _is_extended_resource(name):
            # Kubernetes defaults a missing request to the limit; extended resources cannot overcommit.
            value = _count(requests[name] if name in requests else limits.get(name))
            if value > 0:
                counts[name] = value
    return counts


def _add(total: dict[str, int], extra: Mapping[str, int]) -> None:
    for name, value in extra.items():
        total[name] = total.get(name, 0) + value


def pod_device_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Extended resources a pod holds while it runs, the way the scheduler counts them.

    Per resource: the larger of the sum over app containers (plus restartable "sidecar" init containers,
    which keep running) and the peak of any one init container (plus the sidecars started before it).
    A container's limit counts when it has no request.
    """
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if len(containers) == 1 and not spec.get("initContainers"):  # most pods: one container, nothing to add up
        counts = _container_requests(containers[0])
        return dict(sorted(counts.items())) if len(counts) > 1 else counts
    steady: dict[str, int] = {}
    for container in containers:
        _add(steady, _container_requests(container))
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for container in spec.get("initContainers") or []:
        requests = _container_requests(container)
        if container.get("restartPolicy") == "Always":
            _add(sidecars, requests)
            continue
        for name in {*requests, *sidecars}:
            init_peak[name] = max(init_peak.get(name, 0), requests.get(name, 0) + sidecars.get(name, 0))
    _add(steady, sidecars)
    return {
        name: value
        for name in sorted({*steady, *init_peak})
        if (value := max(steady.get(name, 0), init_peak.get(name, 0))) > 0
    }


def is_pod_active(pod: Mapping[str, Any]) -> bool:
    """Whether a pod holds devices: bound to a node and not Succeeded/Failed (deleting pods still hold them)."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return False
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def hold_pods(pool: Pool, pods: Iterable[Mapping[str, Any]]) -> None:
    """The devices of the pods that still run (bound, not Succeeded/Failed) stay used for the rest of the
    pass (:meth:`Pool.hold <dspool.inventory.pool.Pool.hold>`), as the next pool built from the cluster will
    count them until the pods are gone."""
    held: dict[str, int] = defaultdict(int)
    for pod in pods:
        if not is_pod_active(pod):
            continue
        node = pool.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is not None:
            held[node.name] += pod_device_requests(pod).get(node.resource_name, 0)
    pool.hold(held)


def replica_index(value: str | None) -> int | None:
    """A pod's replica label as an index (None when absent or not a number)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class NodeCache:
    """Parsed nodes kept between pools: a node is parsed again only when its view is a new object.

    The operator's watch replaces a node's view when the node changes (and keeps the same object while it
    does not, heartbeats included), so a pass over 5,000 unchanged nodes copies 5,000 parsed nodes instead
    of parsing them. Each pool gets its own copies: a pool can be changed (and kept by the metrics) without
    touching the next one.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Mapping[str, Any], NodeState | None]] = {}
        self._key: tuple[int, str] | None = None

    def state(self, raw: Mapping[str, Any], catalog: Catalog, fabric_label: str) -> NodeState | None:
        """A fresh NodeState for a node view (as :func:`node_from_k8s`), parsed at most once per view."""
        if self._key != (id(catalog), fabric_label):
            self._entries.clear()  # another catalog or fabric label parses differently
            self._key = (id(catalog), fabric_label)
        name = str((raw.get("metadata") or {}).get("name", ""))
        hit = self._entries.get(name)
        if hit is not None and hit[0] is raw:
            template = hit[1]
        else:
            template = node_from_k8s(raw, catalog, fabric_label)
            self._entries[name] = (raw, template)
        return template.model_copy() if template is not None else None

    def keep_only(self, names: Collection[str]) -> None:
        """Forget nodes that are gone."""
        if len(self._entries) > len(names):
            self._entries = {name: entry for name, entry in self._entries.items() if name in names}


def build_pool(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    reservations: Iterable[Reservation],
    catalog: Catalog,
    fabric_label: str = DEFAULT_FABRIC_LABEL,
    node_cache: NodeCache | None = None,
) -> Pool:
    """The pool from raw nodes, pods and dspool's reservations (see the module docstring for the accounting).

    Reservations and pods on nodes dspool does not manage (not Ready, cordoned, unknown accelerator) are
    ignored: those devices are not in the pool. ``node_cache`` reuses nodes parsed for an earlier pool.
    """
    states: dict[str, NodeState] = {}
    seen: set[str] = set()
    for raw in nodes:
        if node_cache is not None:
            state = node_cache.state(raw, catalog, fabric_label)
            seen.add(str((raw.get("metadata") or {}).get("name", "")))
        else:
            state = node_from_k8s(raw, catalog, fabric_label)
        if state is not None:
            states[state.name] = state
    if node_cache is not None:
        node_cache.keep_only(seen)

    reserved: dict[str, int] = defaultdict(int)
    covered: set[tuple[str, int, str]] = set()
    booked: dict[str, list[Reservation]] = defaultdict(list)
    for reservation in reservations:
        if reservation.node not in states:
            continue
        reserved[reservation.node] += reservation.devices
        # Pods carry the label value of the DSD name (hashed past 63 characters), not the name itself.
        namespace, _, name = reservation.deployment.partition("/")
        covered.add((f"{namespace}/{deployment_label_value(name)}", reservation.replica, reservation.node))
        booked[reservation.deployment].append(reservation)

    used: dict[str, int] = defaultdict(int)
    for pod in pods:
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName")
        state = states.get(node_name) if node_name else None
        if state is None or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        deployment = labels.get(DEPLOYMENT_LABEL)
        if deployment is not None:
            key = (f"{metadata.get('namespace', 'default')}/{deployment}", replica_index(labels.get(REPLICA_LABEL)))
            if (key[0], key[1], node_name) in covered:
                continue
        devices = pod_device_requests(pod).get(state.resource_name, 0)
        if devices:
            used[state.name] += devices

    for name, state in states.items():
        state.used = used.get(name, 0)
        state.reserved = reserved.get(name, 0)
    return Pool(nodes=states, reservations=dict(booked))


def reservations_from_status(namespace: str, name: str, placements: Iterable[ReplicaPlacement]) -> list[Reservation]:
    """The reservations recorded in a DeepSeekDeployment's ``status.placements``, one per replica and node."""
    deployment = f"{namespace}/{name}"
    return [
        Reservation(deployment=deployment, replica=placement.replica, node=node.name, devices=node.devices)
        for placement in placements
        for node in placement.nodes
    ]
