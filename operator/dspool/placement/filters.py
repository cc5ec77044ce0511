"""Which nodes a request may use: node admission (nodeSelector, taints and tolerations), and the admitted
nodes of each accelerator type as one view per request filter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dspool.api import Toleration
from dspool.inventory import NodeState, Pool
from dspool.placement.request import ReplicaRequest

# dspool's serving pods always tolerate the device taints of the accelerators they ask for.
ACCELERATOR_TAINT_KEYS = frozenset({"nvidia.com/gpu", "huawei.com/Ascend910", "huawei.com/Ascend310P"})
BLOCKING_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})

FilterKey = tuple[Any, ...]


def tolerates(tolerations: Sequence[Toleration], taint: dict[str, Any]) -> bool:
    """Whether one of ``tolerations`` tolerates ``taint``, with Kubernetes' matching rules."""
    key = taint.get("key") or ""
    value = taint.get("value") or ""
    effect = taint.get("effect")
    for toleration in tolerations:
        if toleration.effect and toleration.effect != effect:
            continue
        operator = toleration.operator or "Equal"
        if not toleration.key:
            if operator == "Exists":
                return True
            continue
        if toleration.key != key:
            continue
        if operator == "Exists" or (toleration.value or "") == value:
            return True
    return False


def node_admits(node: NodeState, node_selector: dict[str, str], tolerations: Sequence[Toleration]) -> bool:
    """Whether a replica with this nodeSelector and these tolerations may run on ``node``."""
    labels = node.labels
    if any(labels.get(key) != value for key, value in node_selector.items()):
        return False
    return all(
        tolerates(tolerations, taint)
        for taint in node.taints
        if taint.get("effect") in BLOCKING_TAINT_EFFECTS and taint.get("key") not in ACCELERATOR_TAINT_KEYS
    )


@dataclass(frozen=True)
class TypeView:
    """The nodes of one accelerator type a request may use (fixed for a pool and a filter)."""

    accelerator: str
    nodes: tuple[NodeState, ...]  # sorted by name
    domains: tuple[tuple[str, tuple[NodeState, ...]], ...]  # fabric domain -> nodes, sorted by domain
    fabric_labelled: bool
    device_memory_gib: float
    devices_per_node: int
    complete: bool  # every node of the type passed the filters: the pool's FreeIndex answers for it
    domain_names: tuple[str, ...]  # those of ``domains``, in the same order


@dataclass(frozen=True)
class PoolView:
    """Every accelerator type as one request filter sees it."""

    key: FilterKey  # the request's filters (nodeSelector, tolerations, nodes avoided)
    types: dict[str, TypeView]
    excluded: dict[str, int]  # accelerator -> nodes dropped by the filters


NO_FILTER: FilterKey = ("filter", (), (), ())


def filter_key(request: ReplicaRequest) -> FilterKey:
    """What decides which nodes a request may use: requests with the same key see the same nodes."""
    if not request.node_selector and not request.tolerations and not request.avoid_nodes:
        return NO_FILTER  # most requests: the same key as below, without building it
    return (
        "filter",
        tuple(sorted(request.node_selector.items())),
        tuple((t.key, t.operator, t.value, t.effect) for t in request.tolerations),
        tuple(sorted(request.avoid_nodes)),
    )


def pool_view(pool: Pool, request: ReplicaRequest) -> PoolView:
    """The nodes of each accelerator type that pass the request's filters (computed; the placement context
    keeps one per filter key)."""
    types: dict[str, TypeView] = {}
    excluded: dict[str, int] = {}
    for accelerator, nodes in pool.by_accelerator().items():
        admitted = tuple(
            n
            for n in nodes
            if n.name not in request.avoid_nodes and node_admits(n, request.node_selector, request.tolerations)
        )
        if len(admitted) < len(nodes):
            excluded[accelerator] = len(nodes) - len(admitted)
        if admitted:
            types[accelerator] = _type_view(accelerator, admitted, complete=len(admitted) == len(nodes))
    return PoolView(key=filter_key(request), types=types, excluded=excluded)


def _type_view(accelerator: str, admitted: tuple[NodeState, ...], complete: bool) -> TypeView:
    domains: dict[str, list[NodeState]] = {}
    for node in admitted:
        domains.setdefault(node.fabric_domain, []).append(node)
    return TypeView(
        accelerator=accelerator,
        nodes=admitted,
        domains=tuple((d, tuple(domains[d])) for d in sorted(domains)),
        domain_names=tuple(sorted(domains)),
        fabric_labelled=any(n.fabric is not None for n in admitted),
        device_memory_gib=min(n.device_memory_gib for n in admitted),
        devices_per_node=max(n.allocatable for n in admitted),
        complete=complete,
    )
