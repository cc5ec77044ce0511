"""The accelerator pool as dspool sees it: nodes, devices in use by others, devices booked by dspool.

Plain accounting: the nodes with their device counts, dspool's reservations, and the only methods that change
them. Building a pool from what the watches hold (``v1.Node``, ``v1.Pod``, ``status.placements``) is
:mod:`dspool.inventory.kubernetes`'s; no Kubernetes API calls either way.

Accounting rule: every device of a managed node is in exactly one of three buckets.

- ``reserved``: booked by a dspool reservation, whether its pod is bound yet or not;
- ``used``: requested by an active pod that no reservation covers (other workloads, and dspool pods of
  replicas that no longer have a reservation, e.g. an old replica still terminating);
- ``free``: the rest, ``max(0, allocatable - used - reserved)``.

:class:`Pool` owns every change of these counts (:meth:`Pool.reserve`, :meth:`Pool.release`,
and :meth:`Pool.hold`, undone at the end of a :meth:`Pool.trial`); :meth:`Pool.check_invariant` checks what can
go wrong: each node's ``reserved`` equals what its reservations book, no replica is booked twice, and the free
index agrees with the counts.

One state books a device twice on purpose: a reservation made on devices that pods on their way out still
hold (a replica replaced in place; the next pass's pool while the old pods terminate). Those devices are
``used`` and ``reserved`` at once, counted in ``overbooked``; ``free`` is then 0, so nobody else books them,
and the new replica's pods wait for them as the scheduler makes them wait.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, Field, PrivateAttr

from dspool.api import ReplicaPlacement
from dspool.catalog import Vendor
from dspool.inventory.free_index import FreeIndex

NO_FABRIC = "<none>"


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


class PoolListener(Protocol):
    """Something that keeps data derived from a pool's node set (e.g. the placement engine's context)."""

    def nodes_changed(self) -> None:
        """The node set changed (a node added, removed or replaced): drop what was derived from it."""


_L = TypeVar("_L", bound=PoolListener)


class Pool(BaseModel):
    """The managed nodes and dspool's reservations on them.

    Counts change only through :meth:`reserve`, :meth:`release` and :meth:`hold` (undone at the end of a
    :meth:`trial`), which keep the free index exact. The node set changes only through :meth:`add_node`
    and :meth:`remove_node`, which tell the listeners (:meth:`listen`) so that data derived from the nodes'
    labels, taints and accelerators is computed again.
    """

    nodes: dict[str, NodeState] = Field(default_factory=dict)
    reservations: dict[str, list[Reservation]] = Field(
        default_factory=dict, description="deployment (namespace/name) -> its reservations on pool nodes"
    )
    _groups: dict[str, list[NodeState]] | None = PrivateAttr(default=None)
    _free_index: FreeIndex[NodeState] | None = PrivateAttr(default=None)
    _listeners: list[PoolListener] = PrivateAttr(default_factory=list)
    _trials: list[_Trial] = PrivateAttr(default_factory=list)  # innermost last
    _changes: PoolChanges | None = PrivateAttr(default=None)  # what changed since taken (a pool kept between passes)

    def free_index(self) -> FreeIndex[NodeState]:
        """The pool's :class:`FreeIndex`, built on first use and kept exact by the booking methods."""
        private = self.__pydantic_private__ or {}  # direct: pydantic's private-attribute lookup is slow
        index: FreeIndex[NodeState] | None = private.get("_free_index")
        if index is None:
            index = FreeIndex(self.by_accelerator())
            self._free_index = index
        return index

    def by_accelerator(self) -> dict[str, list[NodeState]]:
        """Nodes grouped by accelerator id, each group sorted by node name; groups sorted by id."""
        groups: dict[str, list[NodeState]] | None = (self.__pydantic_private__ or {}).get("_groups")
        if groups is None:
            groups = self._group_by_accelerator()
            self._groups = groups
        return groups

    # ------------------------------------------------------------------------------------- the node set

    def listen(self, listener: PoolListener) -> None:
        """Tell ``listener`` of every change of the node set from now on."""
        self._listeners.append(listener)

    def listener(self, kind: type[_L]) -> _L | None:
        """The listener of this type, if one listens (how a consumer finds the data it keeps for the pool)."""
        listeners: list[PoolListener] = (self.__pydantic_private__ or {})["_listeners"]  # direct: a hot path
        for listener in listeners:
            if isinstance(listener, kind):
                return listener
        return None

    def add_node(self, node: NodeState) -> None:
        """Add a node, or replace the node of that name (its reservations stay: they are re-counted)."""
        self.add_nodes([node])

    def add_nodes(self, nodes: Iterable[NodeState]) -> None:
        """:meth:`add_node` for many nodes, the listeners told once (a pool's first nodes, a re-list)."""
        booked: dict[str, int] | None = None  # what the reservations book per node, summed once if needed
        added = False
        for node in nodes:
            if node.name in self.nodes:
                if booked is None:
                    booked = defaultdict(int)
                    for reservation in (r for rs in self.reservations.values() for r in rs):
                        booked[reservation.node] += reservation.devices
                node.reserved = booked.get(node.name, 0)
            self.nodes[node.name] = node
            self._note_node(node.name)
            added = True
        if added:
            self._nodes_changed()

    def remove_node(self, name: str) -> None:
        """Remove a node; reservations on it are dropped with it (the devices are no longer in the pool)."""
        if self.nodes.pop(name, None) is None:
            return
        for deployment in list(self.reservations):
            kept = [r for r in self.reservations[deployment] if r.node != name]
            if len(kept) != len(self.reservations[deployment]):
                self._note_deployment(deployment)
            if kept:
                self.reservations[deployment] = kept
            else:
                del self.reservations[deployment]
        self._note_node(name)
        self._nodes_changed()

    # ------------------------------------------------------------------- a pool kept between passes

    def track_changes(self) -> None:
        """From now on, record which nodes and deployments change (:meth:`take_changes`): a pool kept between
        passes (:mod:`dspool.inventory.live`) puts back after a pass what the pass changed, and only that."""
        if self._changes is None:
            self._changes = PoolChanges()

    def take_changes(self) -> PoolChanges:
        """What changed since the last call (nothing when changes are not tracked), and start afresh."""
        changes = self._changes
        if changes is None:
            return PoolChanges()
        self._changes = PoolChanges()
        return changes

    def replace_reservations(self, deployment: str, reservations: Iterable[Reservation]) -> None:
        """Make ``reservations`` (those on pool nodes) the deployment's only ones, whatever it held before; the
        nodes' ``reserved`` counts follow. For the pool kept between passes, which puts back what is stored;
        never inside a :meth:`trial`."""
        assert not self._trials, "replace_reservations is not undone by a trial"
        old = self.reservations.pop(deployment, [])
        kept = [r for r in reservations if r.node in self.nodes]
        delta: dict[str, int] = defaultdict(int)
        for reservation in old:
            delta[reservation.node] -= reservation.devices
        for reservation in kept:
            delta[reservation.node] += reservation.devices
        if kept:
            self.reservations[deployment] = kept
        if old or kept:
            self._note_deployment(deployment)
        for name, change in delta.items():
            node = self.nodes.get(name)
            if node is not None and change:
                node.reserved = max(0, node.reserved + change)
                self._counts_changed(node)

    def set_used(self, name: str, used: int) -> None:
        """Set a node's ``used`` count (the devices its uncovered pods hold, as counted from its pods); never
        inside a :meth:`trial`."""
        assert not self._trials, "set_used is not undone by a trial"
        node = self.nodes[name]
        if node.used != used:
            node.used = used
            self._counts_changed(node)

    def _note_node(self, name: str) -> None:
        changes: PoolChanges | None = (self.__pydantic_private__ or {}).get("_changes")
        if changes is not None:
            changes.nodes.add(name)

    def _note_deployment(self, deployment: str) -> None:
        changes: PoolChanges | None = (self.__pydantic_private__ or {}).get("_changes")
        if changes is not None:
            changes.deployments.add(deployment)

    def _nodes_changed(self) -> None:
        changes: PoolChanges | None = (self.__pydantic_private__ or {}).get("_changes")
        if changes is not None:
            changes.node_set = True
        self._groups = None
        self._free_index = None
        for listener in self._listeners:
            listener.nodes_changed()

    def _counts_changed(self, node: NodeState) -> None:
        """Keep the free index exact after a node's counts changed (called by every booking method)."""
        private = self.__pydantic_private__ or {}
        changes: PoolChanges | None = private.get("_changes")
        if changes is not None:
            changes.nodes.add(node.name)
        index: FreeIndex[NodeState] | None = private.get("_free_index")
        if index is not None:
            index.moved(node)

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
        self._note_deployment(deployment)
        booked = self.reservations.setdefault(deployment, [])
        for name, devices in wanted.items():
            node = self.nodes[name]
            node.reserved += devices
            self._counts_changed(node)
            # validated: pydantic's model_construct searches every field's aliases and costs twice as much
            booked.append(Reservation(deployment=deployment, replica=placement.replica, node=name, devices=devices))

    def release(self, deployment: str, replica: int) -> None:
        """Give back the devices one replica holds: those the pool recorded for it (never more), on the
        nodes still in the pool. Releasing twice is harmless."""
        booked = self.reservations.get(deployment, [])
        if not any(r.replica == replica for r in booked):
            return
        trial = self._open_trial()
        if trial is not None:
            trial.remember(self, deployment, [r.node for r in booked if r.replica == replica])
        self._note_deployment(deployment)
        keep: list[Reservation] = []
        for reservation in booked:
            if reservation.replica != replica:
                keep.append(reservation)
                continue
            node = self.nodes.get(reservation.node)
            if node is not None:
                node.reserved = max(0, node.reserved - reservation.devices)
                self._counts_changed(node)
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
                self._counts_changed(node)

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

        The checks that catch bugs: every node's counts are not negative and its ``reserved`` equals the
        devices its reservations book (a booking method that forgot a node, or a release that gave back
        more than was booked); no replica is booked twice on a node; every reservation is on a pool node and
        books at least one device; the free index agrees with every node's ``free`` (a count changed
        behind the pool's back).
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
        index: FreeIndex[NodeState] | None = (self.__pydantic_private__ or {}).get("_free_index")
        for name, node in self.nodes.items():
            if min(node.allocatable, node.used, node.reserved) < 0:
                problems.append(f"{name}: negative count ({node.allocatable=}, {node.used=}, {node.reserved=})")
            if node.reserved != booked.get(name, 0):
                problems.append(f"{name}: {node.reserved} reserved but its reservations book {booked.get(name, 0)}")
            indexed = index.free_of(name) if index is not None else None
            if indexed is not None and indexed != node.free:
                problems.append(f"{name}: the free index says {indexed} free, the node {node.free}")
        if problems:
            raise PoolInvariantError("; ".join(problems))


@dataclass
class PoolChanges:
    """What changed in a pool since its changes were last taken (:meth:`Pool.take_changes`)."""

    nodes: set[str] = field(default_factory=set)  # counts changed, or the node added, replaced or removed
    deployments: set[str] = field(default_factory=set)  # reservations booked, released or replaced
    node_set: bool = False  # a node added, replaced or removed


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
            pool._counts_changed(node)
        for deployment, booked in self.reservations.items():
            pool._note_deployment(deployment)
            if booked is None:
                pool.reservations.pop(deployment, None)
            else:
                pool.reservations[deployment] = booked
