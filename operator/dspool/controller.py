"""The kopf layer: watch nodes, pods and DeepSeekDeployments into indexes; one loop reconciles them all.

Handlers only read (indexes), call the pure core (:func:`dspool.reconcile.reconcile`) and write (status,
workloads, events). Every decision of a pass runs against one pool in memory, one DSD after another, so
two deployments never book the same device; reservations live in each DSD's ``status.placements``, so a
restarted operator rebuilds the pool from the cluster before it places anything (kopf fills every index
before it calls any other handler, and the loop starts from the first such call). A Lease makes sure only
one operator decides for a pool at a time. No finalizers are added: DSDs can be deleted while the operator
is down, and owner references garbage-collect their workloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from prometheus_client import start_http_server

from dspool import api
from dspool.catalog import Catalog, load_catalog
from dspool.inventory import DEFAULT_FABRIC_LABEL, Pool, build_pool, reservations_from_status
from dspool.lease import LeaderLease, LeaseKeeper, NotLeadingError
from dspool.metrics import DeploymentSample, OperatorMetrics, PassSample
from dspool.mindie import MINDCLUSTER_CRD
from dspool.moves import RebalanceMode, pdb_budgets, refused_replica, start_plans, status_with_moves, waiting_on
from dspool.placement import DemandMix
from dspool.rebalance import RebalancePolicy
from dspool.reconcile import Event, ReconcileResult, ReconcileSettings, reconcile
from dspool.report import demand_of
from dspool.views import compact_node, compact_pod, present_nodes, selector_matches
from dspool.workloads import images_from_env

log = logging.getLogger("dspool")

# Kinds dspool creates for a DSD; those the last decision no longer wants are deleted.
OBJECT_KINDS = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
]
FIELD_MANAGER = "dspool"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
WATCHED_CRDS = (LWS_CRD, MINDCLUSTER_CRD)  # installing or removing either changes what dspool builds
REQUEST_TIMEOUT = 30  # seconds; a hung API call must not stall every decision
EVENT_REPEAT_SECONDS = 600  # the same event is posted again after this long
REAPPLY_SECONDS = 600  # every object is applied again this often, restoring any deleted or edited by hand


@dataclass
class OperatorConfig:
    """Settings of one operator process (``dspool run`` flags)."""

    namespaces: list[str] = field(default_factory=list)  # empty = every namespace
    node_selector: dict[str, str] = field(default_factory=dict)  # only nodes with these labels form the pool
    fabric_label: str = DEFAULT_FABRIC_LABEL
    catalog_path: str | None = None
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.3
    stuck_after_seconds: float = 120.0
    node_grace_seconds: float = 60.0  # a node NotReady for less than this keeps its replicas
    lease_namespace: str = "default"
    lease_name: str = "dspool-operator"
    lease_seconds: int = 15
    metrics_port: int | None = 8081  # Prometheus /metrics; None = off
    node_metrics: bool = True  # per-node device series (nodes x 3); off for very large pools
    rebalance: RebalanceMode = RebalanceMode.DRY_RUN
    rebalance_policy: RebalancePolicy = field(default_factory=RebalancePolicy)


@dataclass
class Snapshot:
    """What the indexes held at the start of a pass (plain lists; safe to read from a worker thread)."""

    nodes: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    deployments: list[dict[str, Any]]
    pdbs: list[dict[str, Any]] = field(default_factory=list)


class Operator:
    """State of the running operator: config, API clients, the change signal and what it last wrote."""

    def __init__(self, cfg: OperatorConfig) -> None:
        self.cfg = cfg
        self.catalog: Catalog = load_catalog(cfg.catalog_path)
        self.changed = asyncio.Condition()
        self.version = 0
        self.node_views: dict[str, dict[str, Any]] = {}  # last compacted node, to ignore heartbeats
        # uid -> the placements and moves we wrote, until the watch echoes them (the truth in between)
        self.written_placements: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.applied: dict[tuple[str, str, str, str], str] = {}  # (apiVersion, kind, ns, name) -> content hash
        self.desired_objects: dict[str, set[tuple[str, str, str]]] = {}  # uid -> (apiVersion, kind, name)
        self.posted_events: dict[tuple[str, str, str], float] = {}  # (uid, reason, message) -> when
        self.api_client: client.ApiClient | None = None
        self.dynamic: DynamicClient | None = None
        self.resources: dict[tuple[str, str], Any] = {}  # (apiVersion, kind) -> dynamic resource
        self.lease: LeaderLease | None = None
        self.keeper: LeaseKeeper | None = None
        self.leading = False
        self.new_term = threading.Event()  # set by the lease keeper when this process becomes leader
        self.settings = ReconcileSettings(stuck_after_seconds=cfg.stuck_after_seconds)
        self.indexes: tuple[kopf.Index[Any, Any], kopf.Index[Any, Any], kopf.Index[Any, Any]] | None = None
        self.pdb_index: kopf.Index[Any, Any] | None = None
        self.indexes_ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.metrics = OperatorMetrics()

    # ------------------------------------------------------------------ setup and signalling

    def connect(self) -> None:
        """Create API clients (in-cluster config or kubeconfig), detect LeaderWorkerSet, prepare the Lease."""
        try:
            config.load_incluster_config()
            self.api_client = client.ApiClient()
        except config.ConfigException:
            self.api_client = config.new_client_from_config()
        self.dynamic = DynamicClient(self.api_client)
        # The client caches discovery in a file shared by every process on the host: start from the cluster
        # as it is now (a CRD such as LWS may have been installed or removed since).
        self.dynamic.resources.invalidate_cache()
        lws = self._served("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
        mindcluster = self._served("mindxdl.gitee.com/v1", "AscendJob")
        self.settings = ReconcileSettings(
            lws_available=lws,
            images=images_from_env(os.environ),
            stuck_after_seconds=self.cfg.stuck_after_seconds,
            mindcluster=mindcluster,
            rebalance_policy=self.cfg.rebalance_policy,
        )
        identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease = LeaderLease(
            self.api_client, self.cfg.lease_namespace, self.cfg.lease_name, identity, self.cfg.lease_seconds
        )
        self.keeper = LeaseKeeper(self.lease, max(1.0, self.cfg.lease_seconds / 5), self._leadership_changed)
        if self.cfg.metrics_port:
            start_http_server(self.cfg.metrics_port, registry=self.metrics.registry)
        log.info("connected; LeaderWorkerSet %s", "available" if lws else "not installed (StatefulSets instead)")
        if mindcluster:
            log.info("MindCluster's ascend-operator is installed: it writes the MindIE rank tables, dspool does not")

    def _served(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves a kind (per the dynamic client's discovery)."""
        assert self.dynamic is not None
        try:
            self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return False
        return True

    def crd_changed(self, name: str, established: bool) -> bool:
        """A watched CRD appeared or went: build LeaderWorkerSets or StatefulSets, write rank tables or not.
        True when that changes what dspool builds (the caller wakes the loop)."""
        if name == LWS_CRD:
            if self.settings.lws_available == established:
                return False
            self.settings = dataclasses.replace(self.settings, lws_available=established)
        else:
            if self.settings.mindcluster == established:
                return False
            self.settings = dataclasses.replace(self.settings, mindcluster=established)
        if self.dynamic is not None:
            self.dynamic.resources.invalidate_cache()  # discovery must see the kind appear or go
        self.resources.clear()
        self.applied.clear()  # apply everything again with the new shape
        log.info("%s %s", name, "installed" if established else "removed")
        return True

    async def poke(self) -> None:
        """Wake the reconcile loop: the cluster changed."""
        async with self.changed:
            self.version += 1
            self.changed.notify_all()

    async def wait_for_change(self, seen: int, timeout: float) -> None:
        """Wait until something changed after version ``seen``, or the timeout passed."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.version != seen), timeout)
            except TimeoutError:
                return
        await asyncio.sleep(self.cfg.debounce_seconds)  # let a burst of events settle into one pass

    def manages(self, namespace: str | None) -> bool:
        """Whether DSDs in this namespace are ours."""
        return not self.cfg.namespaces or namespace in self.cfg.namespaces

    def capture(
        self, nodes: kopf.Index[Any, Any], pods: kopf.Index[Any, Any], dsds: kopf.Index[Any, Any],
        pdbs: kopf.Index[Any, Any],
    ) -> None:  # fmt: skip
        """Keep kopf's live index views; kopf hands them out only once every index is fully listed."""
        if self.indexes is None:
            self.indexes = (nodes, pods, dsds)
            self.pdb_index = pdbs
            self.indexes_ready.set()

    def snapshot(self) -> Snapshot:
        """Copy the index contents into plain lists (on the event loop, where kopf mutates them)."""
        assert self.indexes is not None
        nodes, pods, dsds = self.indexes

        def values(index: kopf.Index[Any, Any]) -> list[dict[str, Any]]:
            return [value for key in list(index.keys()) for value in index.get(key, [])]

        pdbs = values(self.pdb_index) if self.pdb_index is not None else []
        return Snapshot(nodes=values(nodes), pods=values(pods), deployments=values(dsds), pdbs=pdbs)

    # ------------------------------------------------------------------ the loop

    async def main_loop(self) -> None:
        """Reconcile every managed DSD whenever nodes, pods or DSDs change, and every resync period, while
        this process leads (the lease keeper renews on its own thread; every write checks the fence)."""
        await self.indexes_ready.wait()
        last_reapply = time.monotonic()
        while True:
            seen = self.version
            try:
                if self.lease is not None and self.lease.leading():
                    if self.new_term.is_set():
                        self.new_term.clear()
                        self._forget_writes()
                    snapshot = self.snapshot()
                    await asyncio.to_thread(self.reconcile_all, snapshot)
            except NotLeadingError:
                log.warning("lost the lease during a pass; stopped writing")
            except Exception:  # never let one bad pass stop the operator; the next starts from the cluster
                log.exception("reconcile pass failed (will retry)")
            await self.wait_for_change(seen, min(self.cfg.resync_seconds, max(1.0, self.cfg.lease_seconds / 5)))
            if time.monotonic() - last_reapply > REAPPLY_SECONDS:
                last_reapply = time.monotonic()
                self.applied.clear()  # apply everything once more, restoring objects deleted or edited by hand

    def _leadership_changed(self, leading: bool) -> None:
        """From the lease keeper's thread: a new term starts, or this process lost the Lease."""
        if leading:
            self.new_term.set()  # the loop forgets what an earlier term wrote before its next pass
        elif self.leading:
            log.warning("lost the lease %s/%s; another operator decides now", self.cfg.lease_namespace,
                        self.cfg.lease_name)  # fmt: skip
        self.leading = leading
        self.metrics.state.set_leader(leading)

    def _forget_writes(self) -> None:
        """On gaining the Lease, forget what an earlier term wrote: another holder may have written since,
        and only the cluster's state counts."""
        self.written_placements.clear()
        self.applied.clear()
        self.desired_objects.clear()

    def build_pool(self, snapshot: Snapshot) -> Pool:
        """The pool as the snapshot (plus our own status writes not yet echoed by the watch) describes it."""
        reservations = []
        live = set()
        for entry in snapshot.deployments:
            meta = entry["metadata"]
            uid = meta["uid"]
            live.add(uid)
            stored = _booking(entry.get("status") or {})
            if uid in self.written_placements and self.written_placements[uid] == stored:
                del self.written_placements[uid]  # the watch caught up: the cluster is the truth again
            placements = self.written_placements.get(uid, stored)["placements"]
            parsed = api.placements_from_status({"placements": placements})
            reservations.extend(reservations_from_status(meta["namespace"], meta["name"], parsed))
        self._forget_deleted(live)
        return build_pool(snapshot.nodes, snapshot.pods, reservations, self.catalog, self.cfg.fabric_label)

    def _forget_deleted(self, live: set[str]) -> None:
        for uid in [u for u in self.written_placements if u not in live]:
            del self.written_placements[uid]
        for uid in [u for u in self.desired_objects if u not in live]:
            del self.desired_objects[uid]
        for key in [k for k in self.posted_events if k[0] not in live]:
            del self.posted_events[key]

    def reconcile_all(self, snapshot: Snapshot) -> list[ReconcileResult]:
        """One pass (in a worker thread): one pool, every DSD in creation order, reserving as it goes."""
        started = time.monotonic()
        now = datetime.now(UTC)
        pool = self.build_pool(snapshot)
        present = present_nodes(snapshot.nodes, now, self.cfg.node_grace_seconds)
        pods_by_deployment: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for pod in snapshot.pods:
            owner = pod["metadata"]["labels"].get(api.DEPLOYMENT_LABEL)
            if owner:
                pods_by_deployment.setdefault((pod["metadata"]["namespace"], owner), []).append(pod)
        bodies = []
        for body in sorted(
            snapshot.deployments, key=lambda b: (b["metadata"].get("creationTimestamp") or "", b["metadata"]["name"])
        ):
            uid = body["metadata"]["uid"]
            if uid in self.written_placements:  # what we wrote last, until the watch echoes it
                body = {**body, "status": {**(body.get("status") or {}), **self.written_placements[uid]}}
            bodies.append(body)
        demand = DemandMix.of(demand_of(bodies, self.catalog)) if bodies else None
        settings = dataclasses.replace(self.settings, demand=demand)
        notes, started_moves, plan_events = self._rebalance(
            pool, bodies, pods_by_deployment, snapshot.pdbs, now, settings
        )
        results = []
        samples = []
        decision_seconds: list[float] = []
        for body in bodies:
            metadata = body["metadata"]
            if not self.manages(metadata["namespace"]) or metadata.get("deletionTimestamp"):
                continue
            uid, namespace, name = metadata["uid"], metadata["namespace"], metadata["name"]
            key = f"{namespace}/{name}"
            current = dict(body)
            if key in started_moves:  # destinations booked for another DSD's waiting replica
                current["status"] = status_with_moves(current.get("status") or {}, *started_moves[key])
            own_pods = pods_by_deployment.get((namespace, api.deployment_label_value(name)), [])
            try:
                result = reconcile(current, self.catalog, pool, own_pods, now, settings, present, notes.get(key))
                result.events = [*plan_events.get(key, []), *result.events]
                status = result.status.wire()
                # Reservations are persisted before workloads exist: a restart then sees every booked device.
                self._write_status(namespace, name, status, current.get("status") or {})
            except NotLeadingError:
                raise
            except Exception as exc:  # one broken DSD must not stall the others
                log.warning("reconciling %s/%s failed (will retry): %s", namespace, name, _describe(exc))
                # The pool may hold half of that DSD's changes: rebuild it from what is stored.
                pool = self.build_pool(snapshot)
                continue
            self.written_placements[uid] = _booking(status)
            results.append(result)
            self.metrics.record_moves(result.moves_finished, result.moves_rolled_back, result.devices_freed)
            decision_seconds += result.decision_seconds
            desired = result.desired if result.desired is not None else 0
            samples.append(DeploymentSample(namespace, name, desired, result.status, own_pods))
            try:
                if not result.hold:
                    self._apply_objects(uid, namespace, name, result)
            except NotLeadingError:
                raise
            except Exception as exc:
                log.warning("writing objects of %s/%s failed (will retry): %s", namespace, name, _describe(exc))
            try:  # events tell the story even when objects could not be written
                self._post_events(metadata, result)
            except NotLeadingError:
                raise
            except Exception as exc:
                log.warning("posting events of %s/%s failed: %s", namespace, name, _describe(exc))
        sample = PassSample(
            pool, samples, time.monotonic() - started, leader=self.leading, catalog=self.catalog,
            demand=demand.models if demand else (), node_metrics=self.cfg.node_metrics,
        )  # fmt: skip
        self.metrics.record_pass(sample, decision_seconds)
        return results

    def _rebalance(
        self,
        pool: Pool,
        bodies: list[dict[str, Any]],
        pods_by_deployment: Mapping[tuple[str, str], list[dict[str, Any]]],
        pdbs: list[dict[str, Any]],
        now: datetime,
        settings: ReconcileSettings,
    ) -> tuple[dict[str, str], dict[str, tuple[list[Any], list[Any]]], dict[str, list[Event]]]:
        """The pass's rebalancing, before any DSD is reconciled: notes for waiting DSDs (the Rebalancing
        condition), new copies to add to moved DSDs (mode ``on``; booked in ``pool``), and events."""
        notes: dict[str, str] = {}
        events: dict[str, list[Event]] = {}
        for replica, moves in waiting_on(bodies).items():
            key = replica.rsplit("#", 1)[0]
            listed = "; ".join(f"replica {m.replica} to {', '.join(n.name for n in m.to_nodes)} ({m.state.value})"
                               for m in moves)  # fmt: skip
            notes[key] = f"waiting for {len(moves)} move{'s' if len(moves) != 1 else ''} in flight: {listed}"
        if self.cfg.rebalance == RebalanceMode.OFF:
            return notes, {}, events
        refused = []
        for body in bodies:
            metadata = body["metadata"]
            if not self.manages(metadata["namespace"]) or metadata.get("deletionTimestamp"):
                continue
            item = refused_replica(body, self.catalog, settings.images.vllm if settings.images else None)
            if item is not None:
                refused.append(item)
        if not refused:
            return notes, {}, events
        budgets = pdb_budgets(pdbs, pods_by_deployment)
        plans = start_plans(
            pool, refused, bodies, self.catalog, self.cfg.rebalance, now, disruptions_allowed=budgets,
            policy=settings.rebalance_policy, demand=settings.demand,
            engine_image=settings.images.vllm if settings.images else None,
        )  # fmt: skip
        writes: dict[str, tuple[list[Any], list[Any]]] = {}
        for started in plans:
            if started.plan is not None:
                self.metrics.record_plan(len(started.plan.moves), started=started.started)
            if started.started and started.plan is not None:
                notes[started.deployment] = f"moving {len(started.plan.moves)} replica(s): {started.reason}"
                events.setdefault(started.deployment, []).append(Event("Normal", "Rebalancing", started.reason))
                for key, (placements, records) in started.writes.items():
                    previous = writes.get(key, ([], []))
                    writes[key] = (previous[0] + placements, previous[1] + records)
                    for record in records:
                        to = ", ".join(n.name for n in record.to_nodes)
                        message = (f"replica {record.replica} moves make-before-break to {to} (new replica "
                                   f"{record.new_replica}) to make room for {record.for_replica}")  # fmt: skip
                        events.setdefault(key, []).append(Event("Normal", "Moving", message))
            elif started.plan is not None:
                notes.setdefault(started.deployment, f"dry run: would move {len(started.plan.moves)} replica(s): "
                                                      f"{started.reason} (dspool run --rebalance on)")  # fmt: skip
            else:
                notes.setdefault(started.deployment, started.reason)
        return notes, writes, events

    def _counted(self, verb: str, kind: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Make one API write, counting failures by verb, kind and HTTP code. The fence: no write at all
        unless this process holds the Lease, renewed within the renew deadline, right now."""
        if self.lease is None or not self.lease.leading():
            raise NotLeadingError(f"not leading: refusing to {verb} {kind}")
        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            self.metrics.write_errors.labels(verb, kind, str(exc.status)).inc()
            raise

    # ------------------------------------------------------------------ writes (blocking; worker thread)

    def _write_status(self, namespace: str, name: str, status: dict[str, Any], old: Mapping[str, Any]) -> None:
        if _same(status, old):
            return
        custom = client.CustomObjectsApi(self.api_client)
        # A merge patch replaces lists wholesale; fields we no longer set are cleared explicitly.
        patch = {key: None for key in old if key not in status} | status
        self._counted(
            "patch", api.KIND, custom.patch_namespaced_custom_object_status,
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}, _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip

    def _apply_objects(self, uid: str, namespace: str, name: str, result: ReconcileResult) -> None:
        assert self.dynamic is not None
        for obj in result.objects:
            key = (obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"])
            digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
            if self.applied.get(key) == digest:
                continue
            resource = self._resource(obj["apiVersion"], obj["kind"])
            applied = self._counted(
                "apply",
                obj["kind"],
                resource.server_side_apply,
                body=obj,
                name=obj["metadata"]["name"],
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT,
            )
            if getattr(getattr(applied, "metadata", None), "deletionTimestamp", None):
                continue  # an object of the same name is still being deleted (e.g. LWS's): apply again later
            self.applied[key] = digest
        wanted = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in result.objects}
        if self.desired_objects.get(uid) == wanted:
            return
        self._delete_stale(namespace, name, wanted)
        self.desired_objects[uid] = wanted

    def _resource(self, api_version: str, kind: str) -> Any:
        """The dynamic client's resource for a kind, looked up in discovery once."""
        assert self.dynamic is not None
        key = (api_version, kind)
        if key not in self.resources:
            self.resources[key] = self.dynamic.resources.get(api_version=api_version, kind=kind)
        return self.resources[key]

    def _delete_stale(self, namespace: str, name: str, wanted: set[tuple[str, str, str]]) -> None:
        """Delete the DSD's objects that the last decision no longer wants (removed or re-planned replicas)."""
        assert self.dynamic is not None
        selector = f"{api.DEPLOYMENT_LABEL}={api.deployment_label_value(name)}"
        for api_version, kind in OBJECT_KINDS:
            try:
                resource = self._resource(api_version, kind)
            except ResourceNotFoundError:
                continue
            try:
                items = resource.get(
                    namespace=namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                ).items
            except ApiException as exc:
                if exc.status == 404:
                    continue  # the kind was uninstalled (e.g. the LWS CRD): nothing of it to delete
                raise
            for item in items:
                if (api_version, kind, item.metadata.name) in wanted:
                    continue
                with contextlib.suppress(ApiException):  # already gone (404) or retried next pass
                    self._counted(
                        "delete",
                        kind,
                        resource.delete,
                        name=item.metadata.name,
                        namespace=namespace,
                        body={"propagationPolicy": "Background"},
                        _request_timeout=REQUEST_TIMEOUT,
                    )
                self.applied.pop((api_version, kind, namespace, item.metadata.name), None)

    def _post_events(self, metadata: Mapping[str, Any], result: ReconcileResult) -> None:
        uid = metadata["uid"]
        core = client.CoreV1Api(self.api_client)
        now = datetime.now(UTC)
        for event in result.events:
            key = (uid, event.reason, event.message)
            if time.monotonic() - self.posted_events.get(key, -EVENT_REPEAT_SECONDS) < EVENT_REPEAT_SECONDS:
                continue
            self.posted_events[key] = time.monotonic()
            self._counted(
                "create",
                "Event",
                core.create_namespaced_event,
                metadata["namespace"],
                client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name=f"{metadata['name']}."),
                    involved_object=client.V1ObjectReference(
                        api_version=api.API_VERSION,
                        kind=api.KIND,
                        name=metadata["name"],
                        namespace=metadata["namespace"],
                        uid=uid,
                    ),
                    type=event.type,
                    reason=event.reason,
                    message=event.message[:1024],
                    first_timestamp=now,
                    last_timestamp=now,
                    count=1,
                    source=client.V1EventSource(component="dspool"),
                ),
                _request_timeout=REQUEST_TIMEOUT,
            )
            self.metrics.events_posted.labels(event.type, event.reason).inc()
            log.info("%s/%s %s: %s", metadata["namespace"], metadata["name"], event.reason, event.message)


def _booking(status: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The part of a status that books devices: placements, and the moves that say which are new copies."""
    return {"placements": list(status.get("placements") or []), "moves": list(status.get("moves") or [])}


def _same(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return json.dumps(new, sort_keys=True, default=str) == json.dumps(dict(old), sort_keys=True, default=str)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


OPERATOR: Operator | None = None


def _operator() -> Operator:
    if OPERATOR is None:
        raise RuntimeError("dspool operator not configured; start it with 'dspool run'")
    return OPERATOR


def register(cfg: OperatorConfig) -> Operator:
    """Install the process-wide operator state that the kopf handlers below use."""
    global OPERATOR
    OPERATOR = Operator(cfg)
    return OPERATOR


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Connect and start the loop; dspool posts its own events and adds no finalizers."""
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    op = _operator()
    await asyncio.to_thread(op.connect)
    if op.keeper is not None:
        op.keeper.start()
    op.task = asyncio.create_task(op.main_loop())


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate like the kubernetes client does (in-cluster or kubeconfig)."""
    return kopf.login_via_client(**kwargs)


@kopf.index("", "v1", "nodes")
async def nodes_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Nodes that belong to the pool, compacted; only real changes (not heartbeats) wake the loop."""
    op = _operator()
    if not selector_matches(op.cfg.node_selector, body.get("metadata", {}).get("labels") or {}):
        if op.node_views.pop(name, None) is not None:
            await op.poke()  # relabelled out of the pool
        return {}
    view = compact_node(body)
    if op.node_views.get(name) != view:
        op.node_views[name] = view
        await op.poke()
    return {name: view}


@kopf.index("", "v1", "pods")
async def pods_index(uid: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Pods that hold accelerator devices or belong to dspool, in every namespace."""
    pod = compact_pod(body)
    if pod is None:
        return {}
    await _operator().poke()
    return {uid: pod}


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def deployments_index(uid: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Every DSD (metadata, spec, status): its reservations count whoever manages it."""
    await _operator().poke()
    metadata = body.get("metadata", {})
    return {
        uid: {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {
                key: metadata.get(key)
                for key in ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
            },
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
    }


@kopf.index("policy", "v1", "poddisruptionbudgets")
async def pdbs_index(uid: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """PodDisruptionBudgets: a replica whose pods one selects moves only when it allows a disruption."""
    await _operator().poke()
    spec, status = body.get("spec") or {}, body.get("status") or {}
    return {
        uid: {
            "namespace": body.get("metadata", {}).get("namespace"),
            "selector": dict(spec.get("selector") or {}),
            "disruptionsAllowed": status.get("disruptionsAllowed", 0),
        }
    }


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event("", "v1", "nodes", when=_deleted)
@kopf.on.event("", "v1", "pods", when=_deleted)
async def object_deleted(name: str, **_: Any) -> None:
    """A node or pod is gone (indexes drop it without calling the index function): wake the loop."""
    op = _operator()
    op.node_views.pop(name, None)
    await op.poke()


def _watched_crd(name: str, **_: Any) -> bool:
    return name in WATCHED_CRDS


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_watched_crd)
async def crd_event(name: str, type: str | None, body: kopf.Body, **_: Any) -> None:
    """LeaderWorkerSet or MindCluster installed or removed while running: picked up without a restart."""
    conditions = (body.get("status") or {}).get("conditions") or []
    established = type != "DELETED" and any(
        c.get("type") == "Established" and c.get("status") == "True" for c in conditions
    )
    op = _operator()
    if op.dynamic is not None and await asyncio.to_thread(op.crd_changed, name, established):
        await op.poke()


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def deployment_event(**kwargs: Any) -> None:
    """Any DSD change: hand the indexes (kwargs named after the index functions) to the loop and wake it."""
    op = _operator()
    op.capture(kwargs["nodes_index"], kwargs["pods_index"], kwargs["deployments_index"], kwargs["pdbs_index"])
    await op.poke()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop the loop and hand the Lease over at once."""
    op = _operator()
    if op.task is not None:
        op.task.cancel()
    if op.keeper is not None:
        await asyncio.to_thread(op.keeper.stop)
    if op.lease is not None and op.leading:
        await asyncio.to_thread(op.lease.release)


def run(cfg: OperatorConfig, liveness_port: int | None = 8080, log_level: str = "info") -> None:
    """Run the operator until interrupted (``dspool run``); ``log_level`` is debug, info, warning or error."""
    register(cfg)
    kopf.configure(debug=log_level == "debug", quiet=log_level in ("warning", "error"), log_format=kopf.LogFormat.JSON)
    if log_level == "error":
        logging.getLogger().setLevel(logging.ERROR)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=liveness)
