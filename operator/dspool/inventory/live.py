"""The pool kept between passes: one long-lived :class:`~dspool.inventory.pool.Pool` changed by the watch's events.

:func:`~dspool.inventory.kubernetes.build_pool` builds a pool from every node, every pod and every reservation:
at 5,000 nodes and 50,000 pods that is seconds per pass, whatever changed. :class:`LivePool` keeps what that
walk derives, and changes only what an event touches:

- **nodes**: each node's view and its parsed :class:`NodeState` (a node is parsed again only when its view is a
  new object; the pool's node set changes only when the parsed node does), and which nodes are present
  (:meth:`LivePool.present`: Ready, or NotReady for less than the grace period);
- **pods**: what each pod holds on which node (the pod index), and dspool's pods by (namespace, DSD label)
  (:meth:`LivePool.pods_by_deployment`);
- **reservations**: what every DSD's stored ``status.placements`` (or the status dspool wrote and the watch has
  not echoed yet) books, re-read only for the DSDs whose :class:`Booking` comes from other objects.

A node's ``used`` is what its active pods hold that no reservation covers (the rule of ``build_pool``: a dspool
pod is covered when a reservation of its DSD, replica index and node exists), counted again only for the
nodes an event or a pass touched. The free index and the placement context live with the pool, so they last
too (the context is dropped when the node set changes, as before).

A pass then works on this same pool (:meth:`Pool.reserve`, :meth:`Pool.release`, :meth:`Pool.hold` as before),
and :meth:`LivePool.end_pass` puts back what the pass touched from what is stored: the deployments it booked
or released are read again, the nodes it changed are counted again, so every pass ends with the pool a full
``build_pool`` of the same inputs would give (``tests/unit/test_live_pool.py`` checks it over random event
sequences). :meth:`LivePool.rebuild` recounts everything (a write failed, a decision raised), and a pass that
did not end (it raised) makes the next one compare every view it is given instead of trusting the changes.

Pure: no API calls; the caller hands over views (``dspool.views``) and the changes the watches saw.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from dspool.api import DEPLOYMENT_LABEL, REPLICA_LABEL, deployment_label_value, placements_from_status
from dspool.catalog import Catalog
from dspool.inventory.kubernetes import (
    DEFAULT_FABRIC_LABEL,
    TERMINAL_PHASES,
    node_from_k8s,
    pod_device_requests,
    replica_index,
    reservations_from_status,
)
from dspool.inventory.pool import NodeState, Pool, Reservation

View = dict[str, Any]  # a compact view of a node or pod (dspool.views), as the watches keep it
PodGroup = tuple[str, str]  # (namespace, DSD label value): how dspool's pods name their DSD


@dataclass
class WatchChanges:
    """What the node and pod watches changed since the last pass: key -> the new view, or None (gone).

    Node keys are node names, pod keys :func:`pod_key`; a key changed twice appears once, with its last view.
    """

    nodes: dict[str, View | None] = field(default_factory=dict)
    pods: dict[str, View | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Booking:
    """What one DSD books: its stored ``status.placements`` or, until the watch echoes it, what dspool wrote.

    ``sources`` are the objects it was read from (the DSD's view, the ledger's unechoed write): the same
    objects, by identity, mean the same booking, so it is not read again.
    """

    deployment: str  # namespace/name
    sources: tuple[object, ...]
    placements: Sequence[Mapping[str, Any]]


def pod_key(pod: View) -> str:
    """A pod's key in the pool kept between passes and in the pod watch: namespace/name."""
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def booked_reservations(bookings: Iterable[Booking]) -> list[Reservation]:
    """Every reservation the bookings record (what a full :func:`build_pool` takes)."""
    return [reservation for booking in bookings for reservation in _reservations(booking)]


def _reservations(booking: Booking) -> list[Reservation]:
    namespace, _, name = booking.deployment.partition("/")
    parsed = placements_from_status({"placements": list(booking.placements)})
    return reservations_from_status(namespace, name, parsed)


class _PodRecord(NamedTuple):
    """What one pod means to the pool: devices it holds on a node (none when unbound or finished), whose it is.
    (A tuple: 50,000 of them are made when the watches first list the pods.)"""

    node: str  # "" when it holds nothing: not bound, Succeeded or Failed, no device
    owner: str | None  # "namespace/DSD label" of a dspool pod: a reservation of it may cover the pod
    replica: int | None
    requests: Mapping[str, int]
    group: PodGroup | None  # dspool's pods by (namespace, DSD label), whatever their phase


_NOT_DSPOOL = _PodRecord("", None, None, {}, None)


def _pod_record(pod: View) -> _PodRecord:
    """The way :func:`build_pool` counts a pod, kept so that its change can be undone."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    node = (pod.get("spec") or {}).get("nodeName") or ""
    if node and (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        node = ""
    requests = _shared(pod_device_requests(pod)) if node else {}
    deployment = labels.get(DEPLOYMENT_LABEL)
    if deployment is None:
        return _PodRecord(node, None, None, requests, None) if requests else _NOT_DSPOOL
    owner = f"{metadata.get('namespace', 'default')}/{deployment}"
    group = (metadata["namespace"], deployment) if deployment else None
    return _PodRecord(node if requests else "", owner, replica_index(labels.get(REPLICA_LABEL)), requests, group)


BULK_CHANGES = 2000  # more changes than this (the first lists, a re-list) are applied with the collector paused


@contextmanager
def _collection_paused(paused: bool) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many records are made at once: each of its full
    collections walks every object of a heap holding 50,000 pod views, and the first lists would trigger
    several (the records hold no cycles; reference counting frees them)."""
    if not paused or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


PARSED_FIELDS = tuple(name for name in NodeState.model_fields if name not in ("used", "reserved"))


def _same_node(parsed: NodeState, held: NodeState) -> bool:
    """Whether a node parsed again reads as the one the pool holds (its counts aside)."""
    return all(getattr(parsed, name) == getattr(held, name) for name in PARSED_FIELDS)


_SHARED_REQUESTS: dict[tuple[tuple[str, int], ...], Mapping[str, int]] = {}


def _shared(requests: dict[str, int]) -> Mapping[str, int]:
    """One dict per request shape (pods ask for a few shapes; 50,000 pods would hold 50,000 equal dicts).
    Never changed: records only read it."""
    key = tuple(requests.items())
    found = _SHARED_REQUESTS.get(key)
    if found is None:
        if len(_SHARED_REQUESTS) >= 4096:  # a cluster with that many shapes: stop sharing, keep memory bounded
            return requests
        found = _SHARED_REQUESTS[key] = requests
    return found


def _ready_since(view: View) -> tuple[bool, datetime | None]:
    """(Ready or no Ready condition, since when it is not Ready: None when unreadable)."""
    conditions = (view.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return True, None
    try:
        return False, datetime.fromisoformat(str(ready.get("lastTransitionTime")).replace("Z", "+00:00"))
    except ValueError:
        return False, None


class LivePool:
    """One pool kept in step with the watches' events between passes (see the module docstring).

    Only the pass thread calls it: the watches record their changes and the pass hands them over
    (:meth:`start_pass`), so nothing changes the pool while a pass reads it.
    """

    def __init__(self, catalog: Catalog, fabric_label: str = DEFAULT_FABRIC_LABEL) -> None:
        self.catalog = catalog
        self.fabric_label = fabric_label
        self.pool = Pool()
        self.pool.track_changes()
        self._node_views: dict[str, View] = {}
        self._ready: set[str] = set()
        self._not_ready: dict[str, datetime | None] = {}
        self._pod_views: dict[str, View] = {}
        self._pods: dict[str, _PodRecord] = {}
        self._on_node: dict[str, dict[str, _PodRecord]] = {}  # node -> pods holding devices there
        self._groups: dict[PodGroup, dict[str, View]] = {}
        self._wanted: dict[str, list[Reservation]] = {}  # deployment -> what it books (nodes outside the pool too)
        self._wanted_on: dict[str, set[str]] = {}  # node -> deployments booking it
        self._covered: Counter[tuple[str, int | None, str]] = Counter()  # (owner, replica, node) of every booking
        self._sources: dict[str, tuple[object, ...]] = {}
        self._dirty_nodes: set[str] = set()  # their used count is to be counted again
        self._dirty_deployments: set[str] = set()  # their booking is to be read again
        self._unexported: set[str] = set()  # nodes changed since the metrics' last copy
        self._exported: dict[str, NodeState] = {}
        self._in_pass = False

    # ------------------------------------------------------------------------------------ a pass

    def start_pass(
        self,
        nodes: Sequence[View],
        pods: Sequence[View],
        changes: WatchChanges | None,
        bookings: Iterable[Booking],
    ) -> Pool:
        """Apply what changed since the last pass and return the pool for this one.

        ``changes`` are the watches' (``nodes`` and ``pods`` must be the views they leave); None, or a pass
        before this one that did not end, means: compare every view of ``nodes`` and ``pods`` with those held
        (by identity: a watch replaces a view only when it changes) and recount everything.
        """
        interrupted = self._in_pass
        self._in_pass = True
        if changes is None or interrupted:
            changes = self._differences(nodes, pods)
        with _collection_paused(len(changes.nodes) + len(changes.pods) > BULK_CHANGES):
            added: list[NodeState] = []
            for name, node_view in changes.nodes.items():
                self._apply_node(name, node_view, added)
            self.pool.add_nodes(added)  # at once: the listeners (the placement context) are told once
            for key, pod_view in changes.pods.items():
                self._apply_pod(key, pod_view)
            self._sync(bookings, everything=interrupted)
        return self.pool

    def end_pass(self, bookings: Iterable[Booking]) -> None:
        """Put back what the pass changed from what is stored now: the deployments it booked or released are
        read again and the nodes it changed (holds included) counted again."""
        self._sync(bookings)
        self._in_pass = False

    def interrupted(self) -> None:
        """The pass raised (before its changes were applied, or half way through): the next pass compares every
        view it is given and recounts everything instead of trusting the changes it is handed."""
        self._in_pass = True

    def rebuild(self, bookings: Iterable[Booking]) -> Pool:
        """The pool from what is stored, every booking read again and every node counted again (a write failed
        or a decision raised mid-pass: the pool may hold half a decision)."""
        self._sync(bookings, everything=True)
        return self.pool

    # ------------------------------------------------------------------------------------ what a pass reads

    def present(self, now: datetime, grace_seconds: float) -> set[str]:
        """Nodes whose replicas keep their place (as :func:`dspool.views.present_nodes`): existing, and Ready or
        NotReady for less than the grace period; cordoned and unmanaged nodes included."""
        present = set(self._ready)
        for name, since in self._not_ready.items():
            if since is not None and (now - since).total_seconds() <= grace_seconds:
                present.add(name)
        return present

    def pods_by_deployment(self) -> dict[PodGroup, list[View]]:
        """dspool's pods by (namespace, DSD label), whatever their phase."""
        return {group: list(views.values()) for group, views in self._groups.items()}

    def exported(self) -> Pool:
        """A copy of the pool's nodes for the metrics, which read it from the scrape thread while later passes
        change the pool: only the nodes changed since the last copy are copied again."""
        self._unexported |= self.pool.take_changes().nodes
        exported = dict(self._exported)  # a new dict: the scrape thread may still read the last one
        for name in self._unexported:
            node = self.pool.nodes.get(name)
            if node is None:
                exported.pop(name, None)
            else:
                exported[name] = node.model_copy()
        self._unexported.clear()
        self._exported = exported
        return Pool.model_construct(nodes=exported, reservations={})

    # ------------------------------------------------------------------------------------ events

    def _differences(self, nodes: Sequence[View], pods: Sequence[View]) -> WatchChanges:
        """The changes that turn the views held into these (by identity), and every node marked to be recounted."""
        node_views = {str((view.get("metadata") or {}).get("name", "")): view for view in nodes}
        pod_views: dict[str, View] = {}
        for view in pods:
            key = pod_key(view)
            pod_views[key if key not in pod_views else f"{key}#{len(pod_views)}"] = view  # a list may repeat a pod
        changes = WatchChanges()
        for held, given, changed in ((self._node_views, node_views, changes.nodes),
                                     (self._pod_views, pod_views, changes.pods)):  # fmt: skip
            changed.update({key: view for key, view in given.items() if held.get(key) is not view})
            changed.update({key: None for key in held if key not in given})
        return changes

    def _apply_node(self, name: str, view: View | None, added: list[NodeState]) -> None:
        """A node added, changed or gone: its presence, and the pool's node set when its parsed state changed
        (a node added or replaced goes to ``added``)."""
        if view is None:
            if self._node_views.pop(name, None) is None:
                return
            self._ready.discard(name)
            self._not_ready.pop(name, None)
            parsed = None
        else:
            if self._node_views.get(name) is view:
                return
            self._node_views[name] = view
            ready, since = _ready_since(view)
            if ready:
                self._ready.add(name)
                self._not_ready.pop(name, None)
            else:
                self._ready.discard(name)
                self._not_ready[name] = since
            parsed = node_from_k8s(view, self.catalog, self.fabric_label)
        before = self.pool.nodes.get(name)
        if parsed is None or before is None:
            if parsed is None and before is not None:
                self.pool.remove_node(name)
            if parsed is None:
                return
        elif _same_node(parsed, before):
            return  # nothing the pool reads changed (a condition's time, the node's capacity)
        added.append(parsed)  # a replaced node keeps its reservations (counted again)
        self._dirty_nodes.add(name)
        if before is None:
            self._dirty_deployments |= self._wanted_on.get(name, set())  # bookings on it count again

    def _apply_pod(self, key: str, view: View | None) -> None:
        """A pod added, changed or gone: the pod index, and the nodes whose used count it changes."""
        if view is not None and key not in self._pods:  # a new pod (all of them in the first lists): nothing to undo
            new = _pod_record(view)
            self._pods[key] = new
            self._pod_views[key] = view
            if new.group is not None:
                self._groups.setdefault(new.group, {})[key] = view
            if new.node:
                self._on_node.setdefault(new.node, {})[key] = new
                self._dirty_nodes.add(new.node)
            return
        old = self._pods.pop(key, None)
        self._pod_views.pop(key, None)
        record = _pod_record(view) if view is not None else None
        if view is not None and record is not None:
            self._pods[key] = record
            self._pod_views[key] = view
        old_group = old.group if old is not None else None
        new_group = record.group if record is not None else None
        if old_group is not None and old_group != new_group:
            group = self._groups[old_group]
            del group[key]
            if not group:
                del self._groups[old_group]
        if new_group is not None and view is not None:
            self._groups.setdefault(new_group, {})[key] = view  # a changed pod keeps its place in its group
        if old == record:
            return
        if old is not None and old.node:
            del self._on_node[old.node][key]
            self._dirty_nodes.add(old.node)
        if record is not None and record.node:
            self._on_node.setdefault(record.node, {})[key] = record
            self._dirty_nodes.add(record.node)

    # ------------------------------------------------------------------------------------ bookings and counts

    def _sync(self, bookings: Iterable[Booking], everything: bool = False) -> None:
        """Read again the bookings whose sources changed (all of them with ``everything``), drop those of DSDs
        gone, and count again the nodes marked (all of them with ``everything``)."""
        changes = self.pool.take_changes()  # what a pass (or this pool's own changes) touched
        self._dirty_deployments |= changes.deployments
        self._dirty_nodes |= changes.nodes
        self._unexported |= changes.nodes
        grouped: dict[str, list[Booking]] = {}
        for booking in bookings:
            grouped.setdefault(booking.deployment, []).append(booking)
        for deployment in [d for d in self._sources if d not in grouped]:
            self._replace(deployment, [])  # the DSD is gone
            del self._sources[deployment]
        for deployment in [d for d in self._dirty_deployments if d not in grouped]:
            self.pool.replace_reservations(deployment, [])  # booked by a pass for a DSD no longer there
        for deployment, items in grouped.items():
            sources = tuple(source for booking in items for source in booking.sources)
            held = self._sources.get(deployment)
            if (
                not everything
                and deployment not in self._dirty_deployments
                and held is not None
                and len(held) == len(sources)
                and all(a is b for a, b in zip(held, sources, strict=True))
            ):
                continue
            self._replace(deployment, [r for booking in items for r in _reservations(booking)])
            self._sources[deployment] = sources
        self._dirty_deployments.clear()
        names = set(self.pool.nodes) if everything else self._dirty_nodes
        for name in names:
            if name in self.pool.nodes:
                self.pool.set_used(name, self._used_on(name))
        self._dirty_nodes = set()
        self._unexported |= self.pool.take_changes().nodes

    def _replace(self, deployment: str, reservations: list[Reservation]) -> None:
        """Make ``reservations`` what the deployment books: the pool's, and which pods they cover."""
        namespace, _, name = deployment.partition("/")
        owner = f"{namespace}/{deployment_label_value(name)}"
        for reservation in self._wanted.pop(deployment, []):
            key = (owner, reservation.replica, reservation.node)
            self._covered[key] -= 1
            if not self._covered[key]:
                del self._covered[key]
            self._dirty_nodes.add(reservation.node)
            booking_it = self._wanted_on.get(reservation.node)
            if booking_it is not None:
                booking_it.discard(deployment)
                if not booking_it:
                    del self._wanted_on[reservation.node]
        for reservation in reservations:
            self._covered[(owner, reservation.replica, reservation.node)] += 1
            self._dirty_nodes.add(reservation.node)
            self._wanted_on.setdefault(reservation.node, set()).add(deployment)
        if reservations:
            self._wanted[deployment] = reservations
        self.pool.replace_reservations(deployment, reservations)

    def _used_on(self, name: str) -> int:
        """What the node's active pods hold that no booking covers (``build_pool``'s rule)."""
        resource = self.pool.nodes[name].resource_name
        used = 0
        for record in self._on_node.get(name, {}).values():
            if record.owner is not None and self._covered[(record.owner, record.replica, name)] > 0:
                continue
            used += record.requests.get(resource, 0)
        return used
