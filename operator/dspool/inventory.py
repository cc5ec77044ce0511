"""The accelerator pool as dspool sees it: nodes, devices in use by others, devices booked by dspool.

Pure functions over the raw dicts the kopf layer gets from its watches (``v1.Node`` and ``v1.Pod`` as
returned by the API server, camelCase keys), plus dspool's own reservations (``status.placements`` of every
DeepSeekDeployment). No Kubernetes API calls.

Accounting rule: every device of a managed node is in exactly one of three buckets.

- ``reserved``: booked by a dspool reservation, whether its pod is bound yet or not;
- ``used``: requested by an active pod that no reservation covers (other workloads, and dspool pods of
  replicas that no longer have a reservation, e.g. an old replica still terminating);
- ``free``: the rest, ``max(0, allocatable - used - reserved)``.

:class:`Pool` owns every change of these counts (:meth:`Pool.reserve`, :meth:`Pool.release`,
:meth:`Pool.hold`, :meth:`Pool.hold_pods`) and :meth:`Pool.check_invariant` says whether they still add
up. One state books a device twice on purpose: a reservation made on devices that pods on their way out
still hold (a replica replaced in place; the next pass's pool while the old pods terminate). Those
devices are ``used`` and ``reserved`` at once, counted in ``overbooked``; ``free`` is then 0, so nobody
else books them, and the new replica's pods wait for them as the scheduler makes them wait.

A dspool pod (labels ``dspool.io/deployment`` and ``dspool.io/replica``) on node N is covered when its
namespace/name, replica index and N match a reservation, so a replica is counted once before and after its
pod is bound.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, Field, PrivateAttr

from dspool.api import DEPLOYMENT_LABEL, REPLICA_LABEL, ReplicaPlacement, deployment_label_value
from dspool.catalog import Catalog, Vendor, reported_memory_mib

DEFAULT_FABRIC_LABEL = "dspool.io/fabric"
NO_FABRIC = "<none>"
UNHEALTHY_TAINT_KEYS = frozenset({"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"})
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
MIB_PER_GIB = 1024

_T = TypeVar("_T")


class NodeState(BaseModel):
    """One managed accelerator node and how its devices are accounted."""

    name: str
    accelerator: str = Field(description="catalog accelerator id")
    vendor: Vendor
    resource_name: str = Field(description="extended resource of the devices, e.g. nvidia.com/gpu")
    device_memory_gib: float = Field(gt=0)
    allocatable: int = Field(ge=0, description="devices the node advertises as allocatable")
    used: int = Field(default=0, ge=0, description="devices held by active pods no reservation covers")
    reserved: int = Field(default=0, ge=0, description="devices booked by dspool reservations")
    fabric: str | None = Field(default=None, description="value of the fabric label, None when absent")
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[dict[str, Any]] = Field(default_factory=list)
    # the pool's FreeIndex holding this node, told of every change of the counts (see __setattr__)
    _free_index: FreeIndex | None = PrivateAttr(default=None)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _COUNT_FIELDS:
            private = self.__pydantic_private__
            index = private.get("_free_index") if private else None
            if index is not None:
                index.moved(self)

    @property
    def free(self) -> int:
        """Devices neither used nor reserved (never negative)."""
        return max(0, self.allocatable - self.used - self.reserved)

    @property
    def overbooked(self) -> int:
        """Devices both used and reserved: booked for a replica while pods on their way out still hold them."""
        return max(0, self.used + self.reserved - self.allocatable)

    @property
    def fabric_domain(self) -> str:
        """The network domain a multi-node replica must stay in; unlabelled nodes share ``<none>``."""
        return self.fabric if self.fabric is not None else NO_FABRIC


_COUNT_FIELDS = frozenset({"allocatable", "used", "reserved"})


class FreeIndex:
    """The nodes of each accelerator type bucketed by free devices, so best fit is found without a scan.

    Exact by construction: every node it holds reports each change of ``allocatable``, ``used`` or
    ``reserved`` (``NodeState.__setattr__``), wherever the change comes from (``reserve``/``release``, or
    code that adds a terminating pod's devices to ``used``). Within a bucket, nodes are sorted by name, so
    a lookup returns what a scan in name order would. A node belongs to one index at a time; building a new
    index over a node invalidates the one it was in. Copies of a node or a pool start without an index.
    """

    def __init__(self, groups: Mapping[str, list[NodeState]]) -> None:
        self.valid = True
        self._nodes: dict[str, NodeState] = {}
        self._free: dict[str, int] = {}
        self._buckets: dict[str, list[list[str]]] = {}  # accelerator -> [free] -> sorted node names
        self._totals: dict[str, int] = {}
        # the same per fabric domain of a type, so a gang's nodes are found without a scan of the fabric
        self._domain_buckets: dict[tuple[str, str], list[list[str]]] = {}
        self._domain_totals: dict[tuple[str, str], int] = {}
        for accelerator, nodes in groups.items():
            buckets: list[list[str]] = [[] for _ in range(max(n.allocatable for n in nodes) + 1)]
            total = 0
            for node in nodes:  # sorted by name
                free = node.free
                previous = node._free_index
                if previous is not None and previous is not self:
                    previous.valid = False
                node._free_index = self
                self._nodes[node.name] = node
                self._free[node.name] = free
                self._grow(buckets, free)[free].append(node.name)
                total += free
                domain = (accelerator, node.fabric_domain)
                self._grow(self._domain_buckets.setdefault(domain, []), free)[free].append(node.name)
                self._domain_totals[domain] = self._domain_totals.get(domain, 0) + free
            self._buckets[accelerator] = buckets
            self._totals[accelerator] = total

    @staticmethod
    def _grow(buckets: list[list[str]], free: int) -> list[list[str]]:
        while len(buckets) <= free:
            buckets.append([])
        return buckets

    def moved(self, node: NodeState) -> None:
        """Re-bucket ``node`` after its counts changed (ignored for nodes this index does not hold)."""
        name = node.name
        if self._nodes.get(name) is not node:
            return
        old = self._free[name]
        new = node.free
        if new == old:
            return
        domain = (node.accelerator, node.fabric_domain)
        for buckets in (self._buckets[node.accelerator], self._domain_buckets[domain]):
            bucket = buckets[old]
            del bucket[bisect_left(bucket, name)]
            insort(self._grow(buckets, new)[new], name)
        self._free[name] = new
        self._totals[node.accelerator] += new - old
        self._domain_totals[domain] += new - old

    def best_fit(self, accelerator: str, need: int) -> NodeState | None:
        """The node of the type with the fewest free devices that are still >= ``need`` (first by name)."""
        buckets = self._buckets.get(accelerator, [])
        for free in range(max(need, 0), len(buckets)):
            if buckets[free]:
                return self._nodes[buckets[free][0]]
        return None

    def roomiest(self, accelerator: str) -> NodeState | None:
        """The node of the type with the most free devices (first by name)."""
        for bucket in reversed(self._buckets.get(accelerator, [])):
            if bucket:
                return self._nodes[bucket[0]]
        return None

    def free_of(self, name: str) -> int | None:
        """The free devices the index has on record for a node (None for a node it does not hold)."""
        return self._free.get(name)

    def free_total(self, accelerator: str) -> int:
        """Free devices over all nodes of the type."""
        return self._totals.get(accelerator, 0)

    def domain_free(self, accelerator: str, domain: str) -> int:
        """Free devices over the type's nodes in one fabric domain."""
        return self._domain_totals.get((accelerator, domain), 0)

    def domain_fitting(self, accelerator: str, domain: str, need: int) -> int:
        """How many of the type's nodes in one fabric domain have at least ``need`` free."""
        buckets = self._domain_buckets.get((accelerator, domain), [])
        return sum(len(bucket) for bucket in buckets[max(need, 0) :])

    def domain_best_fits(self, accelerator: str, domain: str, need: int, count: int) -> list[tuple[int, NodeState]]:
        """Up to ``count`` (free, node) of the type in one fabric domain with at least ``need`` free, fewest
        free first, then by name: what sorting a scan of the domain by (free, name) would return."""
        picked: list[tuple[int, NodeState]] = []
        buckets = self._domain_buckets.get((accelerator, domain), [])
        for free in range(max(need, 0), len(buckets)):
            for name in buckets[free]:
                picked.append((free, self._nodes[name]))
                if len(picked) == count:
                    return picked
        return picked

    def __copy__(self) -> None:
        return None  # a copied node or pool must not report into (or read) the original's index

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None


class InsufficientDevicesError(ValueError):
    """A reservation asked for more devices than a node has free, or names a node not in the pool."""


class PoolInvariantError(AssertionError):
    """The pool's counts no longer add up (a bug: only :class:`Pool`'s methods change them)."""


def devices_by_node(placement: ReplicaPlacement) -> dict[str, int]:
    """The devices a placement takes on each of its nodes."""
    wanted: dict[str, int] = {}
    for node in placement.nodes:
        wanted[node.name] = wanted.get(node.name, 0) + node.devices
    return wanted


class Reservation(BaseModel):
    """Devices of one node booked for one replica of a DeepSeekDeployment."""

    deployment: str = Field(description="namespace/name")
    replica: int = Field(ge=0)
    node: str
    devices: int = Field(ge=1)


class AcceleratorTotals(BaseModel):
    """Device counts of one accelerator type over the pool."""

    nodes: int = 0
    allocatable: int = 0
    used: int = 0
    reserved: int = 0
    free: int = 0


class Pool(BaseModel):
    """The managed nodes and dspool's reservations on them.

    The node set and each node's labels, taints and accelerator are treated as fixed once the pool is
    built (a new watch event builds a new pool); only ``used``/``reserved`` change, through
    :meth:`reserve`, :meth:`release`, :meth:`hold` and :meth:`hold_pods` (undone at the end of a
    :meth:`trial`). Derived per-node data may therefore be memoised with :meth:`memo`.
    """

    nodes: dict[str, NodeState] = Field(default_factory=dict)
    reservations: dict[str, list[Reservation]] = Field(
        default_factory=dict, description="deployment (namespace/name) -> its reservations on pool nodes"
    )
    _memo: dict[Any, Any] = PrivateAttr(default_factory=dict)
    _free_index: FreeIndex | None = PrivateAttr(default=None)
    _free_index_signature: int = PrivateAttr(default=-1)
    _trials: list[_Trial] = PrivateAttr(default_factory=list)  # innermost last

    def free_index(self) -> FreeIndex:
        """The pool's :class:`FreeIndex`, built on first use (and again if another index took its nodes)."""
        private = self.__pydantic_private__ or {}  # direct: pydantic's private-attribute lookup is slow
        index: FreeIndex | None = private.get("_free_index")
        if index is None or not index.valid or private.get("_free_index_signature") != len(self.nodes):
            index = FreeIndex(self.by_accelerator())
            self._free_index = index
            self._free_index_signature = len(self.nodes)
        return index

    def by_accelerator(self) -> dict[str, list[NodeState]]:
        """Nodes grouped by accelerator id, each group sorted by node name; groups sorted by id."""
        return self.memo(("by_accelerator",), self._group_by_accelerator)

    def _group_by_accelerator(self) -> dict[str, list[NodeState]]:
        groups: dict[str, list[NodeState]] = defaultdict(list)
        for name in sorted(self.nodes):
            node = self.nodes[name]
            groups[node.accelerator].append(node)
        return {accelerator: groups[accelerator] for accelerator in sorted(groups)}

    def totals(self) -> dict[str, AcceleratorTotals]:
        """Per accelerator id: nodes, allocatable, used, reserved and free devices."""
        result: dict[str, AcceleratorTotals] = {}
        for accelerator, nodes in self.by_accelerator().items():
            result[accelerator] = AcceleratorTotals(
                nodes=len(nodes),
                allocatable=sum(n.allocatable for n in nodes),
                used=sum(n.used for n in nodes),
                reserved=sum(n.reserved for n in nodes),
                free=sum(n.free for n in nodes),
            )
        return result

    def reservations_of(self, deployment: str) -> list[Reservation]:
        """The reservations of one deployment (namespace/name), possibly empty."""
        return self.reservations.get(deployment, [])

    # ----------------------------------------------------------------------------------------- booking

    def reserve(self, deployment: str, placement: ReplicaPlacement) -> None:
        """Book a placement's devices, all nodes or none.

        Raises :class:`InsufficientDevicesError` when a node is not in the pool or has fewer free devices
        than asked, and ``ValueError`` when the replica already holds a reservation (release it first).
        """
        if any(r.replica == placement.replica for r in self.reservations_of(deployment)):
            raise ValueError(f"{deployment} replica {placement.replica} already holds a reservation; release it first")
        wanted = devices_by_node(placement)
        for name, devices in wanted.items():
            node = self.nodes.get(name)
            if node is None:
                raise InsufficientDevicesError(f"cannot reserve on {name}: not in the pool")
            if node.free < devices:
                raise InsufficientDevicesError(
                    f"cannot reserve {devices} devices on {name} for {deployment} replica {placement.replica}: "
                    f"{node.free} free"
                )
        trial = self._open_trial()
        if trial is not None:
            trial.remember(self, deployment, wanted)
        booked = self.reservations.setdefault(deployment, [])
        for name, devices in wanted.items():
            self.nodes[name].reserved += devices
            booked.append(  # checked above: no validation on the placement hot path
                Reservation.model_construct(
                    deployment=deployment, replica=placement.replica, node=name, devices=devices
                )
            )

    def release(self, deployment: str, replica: int) -> None:
        """Give back the devices one replica holds: those the pool recorded for it (never more), on the
        nodes still in the pool. Releasing twice is harmless."""
        booked = self.reservations.get(deployment, [])
        if not any(r.replica == replica for r in booked):
            return
        trial = self._open_trial()
        if trial is not None:
            trial.remember(self, deployment, [r.node for r in booked if r.replica == replica])
        keep: list[Reservation] = []
        for reservation in booked:
            if reservation.replica != replica:
                keep.append(reservation)
                continue
            node = self.nodes.get(reservation.node)
            if node is not None:
                node.reserved = max(0, node.reserved - reservation.devices)
        if keep:
            self.reservations[deployment] = keep
        else:
            self.reservations.pop(deployment, None)

    def hold(self, devices: Mapping[str, int]) -> None:
        """Count devices as used for the rest of the pass (node name -> devices; nodes not in the pool are
        skipped): pods on their way out still hold them, whatever is booked there meanwhile."""
        trial = self._open_trial()
        for name, count in devices.items():
            node = self.nodes.get(name)
            if node is not None and count > 0:
                if trial is not None:
                    trial.remember(self, None, [name])
                node.used += count

    def hold_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """The devices of the pods that still run (bound, not Succeeded/Failed) stay used for the rest of the
        pass, as the next pool built from the cluster will count them until the pods are gone."""
        held: dict[str, int] = defaultdict(int)
        for pod in pods:
            if not is_pod_active(pod):
                continue
            node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is not None:
                held[node.name] += pod_device_requests(pod).get(node.resource_name, 0)
        self.hold(held)

    @contextmanager
    def trial(self) -> Iterator[Pool]:
        """Within the block, changes through :meth:`reserve`/:meth:`release`/:meth:`hold` are undone when it
        ends, however it ends: a planner tries a change and leaves no trace. Trials nest."""
        trial = _Trial()
        self._trials.append(trial)
        try:
            yield self
        finally:
            self._trials.pop()
            trial.undo(self)

    def _open_trial(self) -> _Trial | None:
        """The innermost trial under way, or None (read directly: pydantic's private-attribute lookup is slow)."""
        trials: list[_Trial] | None = (self.__pydantic_private__ or {}).get("_trials")
        return trials[-1] if trials else None

    def check_invariant(self) -> None:
        """Raise :class:`PoolInvariantError` unless the counts add up; cheap (one walk over nodes and
        reservations), for tests after every step.

        Every node: counts not negative; ``used + reserved + free == allocatable + overbooked`` (every
        device in exactly one bucket but those booked while pods on their way out hold them);
        ``reserved`` equal to the devices its reservations book; no replica booked twice on it; the free
        index agrees with ``free``. Every reservation on a pool node, at least one device.
        """
        problems: list[str] = []
        booked: dict[str, int] = defaultdict(int)
        seen: set[tuple[str, int, str]] = set()
        for deployment, reservations in self.reservations.items():
            for reservation in reservations:
                key = (deployment, reservation.replica, reservation.node)
                if key in seen:
                    problems.append(f"{deployment} replica {reservation.replica} booked twice on {reservation.node}")
                seen.add(key)
                if reservation.deployment != deployment or reservation.devices < 1:
                    problems.append(f"malformed reservation {reservation} under {deployment}")
                if reservation.node not in self.nodes:
                    problems.append(f"{deployment} replica {reservation.replica} booked on {reservation.node}, "
                                    "not in the pool")  # fmt: skip
                booked[reservation.node] += reservation.devices
        index = (self.__pydantic_private__ or {}).get("_free_index")
        for name, node in self.nodes.items():
            if min(node.allocatable, node.used, node.reserved) < 0:
                problems.append(f"{name}: negative count ({node.allocatable=}, {node.used=}, {node.reserved=})")
            if node.used + node.reserved + node.free != node.allocatable + node.overbooked:
                problems.append(f"{name}: {node.used} used + {node.reserved} reserved + {node.free} free != "
                                f"{node.allocatable} allocatable + {node.overbooked} overbooked")  # fmt: skip
            if node.reserved != booked.get(name, 0):
                problems.append(f"{name}: {node.reserved} reserved but its reservations book {booked.get(name, 0)}")
            indexed = index.free_of(name) if index is not None and index.valid else None
            if indexed is not None and indexed != node.free:
                problems.append(f"{name}: the free index says {indexed} free, the node {node.free}")
        if problems:
            raise PoolInvariantError("; ".join(problems))

    def memo(self, key: Any, compute: Callable[[], _T]) -> _T:
        """Derived data that depends only on the fixed node set (labels, taints, accelerators), cached."""
        signature = len(self.nodes)
        memo: dict[Any, Any] = (self.__pydantic_private__ or {})["_memo"]  # direct: the attribute lookup is slow
        cached = memo.get(key)
        if cached is not None and cached[0] == signature:
            hit: _T = cached[1]
            return hit
        value = compute()
        memo[key] = (signature, value)
        return value


@dataclass
class _Trial:
    """What a :meth:`Pool.trial` changed, as it was before: node counts and deployments' reservations."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (used, reserved)
    reservations: dict[str, list[Reservation] | None] = field(default_factory=dict)  # None: had none

    def remember(self, pool: Pool, deployment: str | None, nodes: Iterable[str]) -> None:
        """Keep, the first time each is changed in this trial, the deployment's reservations and the nodes' counts."""
        if deployment is not None and deployment not in self.reservations:
            booked = pool.reservations.get(deployment)
            self.reservations[deployment] = list(booked) if booked is not None else None
        for name in nodes:
            node = pool.nodes.get(name)
            if node is not None and name not in self.counts:
                self.counts[name] = (node.used, node.reserved)

    def undo(self, pool: Pool) -> None:
        for name, (used, reserved) in self.counts.items():
            node = pool.nodes[name]
            node.used, node.reserved = used, reserved
        for deployment, booked in self.reservations.items():
            if booked is None:
                pool.reservations.pop(deployment, None)
            else:
                pool.reservations[deployment] = booked


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
    steady: dict[str, int] = {}
    for container in spec.get("containers") or []:
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


def _replica_index(value: str | None) -> int | None:
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
            key = (f"{metadata.get('namespace', 'default')}/{deployment}", _replica_index(labels.get(REPLICA_LABEL)))
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
