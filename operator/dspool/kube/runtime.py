"""The running operator: API client, watches, the Lease, the writer, and the loop that runs passes.

Wiring only; the decisions are in :mod:`dspool.loop` (the pass) and the pure core. The kopf handlers
(:mod:`dspool.handlers`) start and stop this object and tell it when a watched CRD comes or goes.

- **Watches.** Nodes (of the pool), pods (those that hold devices or are dspool's), DSDs and PDBs are
  kept by light informers (:mod:`dspool.kube.informer`); any real change wakes the loop, node heartbeats
  do not. Nothing is decided before every informer has listed its kind once.
- **One pool kept between passes** (:class:`dspool.inventory.LivePool`, held by the pass runner): the node and
  pod watches journal which keys changed, and each snapshot hands those changes to the pass, which applies
  them on its own thread; a watch thread never touches the pool.
- **One pass at a time**, on a worker thread, while this process leads; a burst of changes becomes one
  pass (``debounce_seconds``); every ``resync_seconds`` a pass runs anyway.
- **The Lease** is renewed on its own thread (:class:`dspool.kube.lease.LeaseKeeper`); on gaining it the
  ledger is cleared and dspool's existing objects are listed once; on losing it writes stop at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from kubernetes import client, config
from prometheus_client import start_http_server

from dspool import api
from dspool.catalog import Catalog, load_catalog
from dspool.inventory import WatchChanges, pod_key
from dspool.kube.informer import Informer
from dspool.kube.lease import LeaderLease, LeaseKeeper
from dspool.kube.writer import ApiWriter
from dspool.ledger import NotLeadingError
from dspool.loop import PassRunner, Snapshot
from dspool.metrics import OperatorMetrics
from dspool.reconcile import ReconcileSettings
from dspool.refusals import compact_failed_create, compact_workload
from dspool.selectors import equality_selector, selector_selects
from dspool.settings import OperatorSettings
from dspool.views import compact_deployment, compact_job, compact_node, compact_pdb, compact_pod
from dspool.weights.jobs import COMPONENT_LABEL, EVICT_COMPONENT, FETCH_COMPONENT
from dspool.workloads import images_from_env

log = logging.getLogger("dspool")

LWS_API = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
MINDCLUSTER_API = ("mindxdl.gitee.com/v1", "AscendJob")
MODEL_CACHE_JOBS = f"{COMPONENT_LABEL} in ({FETCH_COMPONENT},{EVICT_COMPONENT})"
REAPPLY_SECONDS = 600  # every object is applied again this often, restoring any deleted or edited by hand


def api_client_for(concurrency: int) -> client.ApiClient:
    """An API client from the in-cluster account or the kubeconfig, with a connection per concurrent write."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = concurrency + 8  # the writes, the Lease and the watches
    return client.ApiClient(configuration)


class OperatorRuntime:
    """State of the running operator (created by ``dspool run``, handed to kopf's handlers as its memo)."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self.metrics = OperatorMetrics()
        self.reconcile_settings = ReconcileSettings(stuck_after_seconds=settings.stuck_after_seconds)
        self.version = 0
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.new_term = threading.Event()  # set by the lease keeper when this process becomes leader
        self.leading = False
        self.started_at = time.monotonic()
        self.first_pass_at: float | None = None
        self.writer: ApiWriter | None = None
        self.lease: LeaderLease | None = None
        self.keeper: LeaseKeeper | None = None
        self.runner: PassRunner | None = None
        self.informers: dict[str, Informer] = {}
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ start and stop

    def connect(self) -> None:
        """Create the API client, detect LeaderWorkerSet and MindCluster, prepare the Lease and the watches."""
        api_client = api_client_for(self.settings.write_concurrency)
        identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease = LeaderLease(
            api_client, self.settings.lease_namespace, self.settings.lease_name, identity, self.settings.lease_seconds
        )
        self.writer = ApiWriter(api_client, self.lease.leading, self.metrics)
        lws, mindcluster = self.writer.served(*LWS_API), self.writer.served(*MINDCLUSTER_API)
        self.reconcile_settings = ReconcileSettings(
            lws_available=lws,
            images=images_from_env(os.environ),
            stuck_after_seconds=self.settings.stuck_after_seconds,
            mindcluster=mindcluster,
            rebalance_policy=self.settings.rebalance_policy,
            interconnect=self.settings.interconnect,
            model_cache_dir=self.settings.model_cache_dir if self.settings.model_cache else None,
        )
        self.runner = PassRunner(self.settings, self.catalog, self.writer, self.metrics)
        self.keeper = LeaseKeeper(self.lease, max(1.0, self.settings.lease_seconds / 5), self._leadership_changed)
        self.informers = self._informers(api_client)
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, registry=self.metrics.registry)
        log.info("connected; LeaderWorkerSet %s", "available" if lws else "not installed (StatefulSets instead)")
        if mindcluster:
            log.info("MindCluster's ascend-operator is installed: it writes the MindIE rank tables, dspool does not")

    def _informers(self, api_client: client.ApiClient) -> dict[str, Informer]:
        """The watches a pass reads: nodes, pods, DSDs, PDBs, refused workloads, and the model cache's Jobs."""
        core, policy = client.CoreV1Api(api_client), client.PolicyV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        informers = {
            # nodes and pods journal their changes: the pass applies them to the pool it keeps between passes
            "nodes": Informer("nodes", core.list_node, self._compact_node, self.notify, journal=True),
            "pods": Informer("pods", core.list_pod_for_all_namespaces, _compact_pod, self.notify, journal=True),
            "deepseekdeployments": Informer(
                "deepseekdeployments",
                functools.partial(custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.PLURAL),
                _by_uid(compact_deployment),
                self.notify,
            ),
            "poddisruptionbudgets": Informer(
                "poddisruptionbudgets",
                policy.list_pod_disruption_budget_for_all_namespaces,
                _by_uid(compact_pdb),
                self.notify,
            ),
            # Pods the cluster refuses to create for dspool's workloads (quota, webhooks): dspool.refusals
            "failingworkloads": Informer(
                "deployments",
                functools.partial(
                    client.AppsV1Api(api_client).list_deployment_for_all_namespaces, label_selector=api.DEPLOYMENT_LABEL
                ),
                _by_uid(compact_workload),
                self.notify,
            ),
            "failedcreates": Informer(
                "events",
                functools.partial(core.list_event_for_all_namespaces, field_selector="reason=FailedCreate"),
                _by_uid(compact_failed_create),
                self.notify,
            ),
        }
        if self.settings.model_cache:  # the node model cache's record: dspool's fetch and evict Jobs
            informers["modelcachejobs"] = Informer(
                "jobs",
                functools.partial(
                    client.BatchV1Api(api_client).list_job_for_all_namespaces, label_selector=MODEL_CACHE_JOBS
                ),
                _by_uid(compact_job),
                self.notify,
            )
        return informers

    async def start(self) -> None:
        """Connect (blocking calls on a thread), then start the watches, the Lease keeper and the loop."""
        self._event_loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await asyncio.to_thread(self.connect)
        for informer in self.informers.values():
            informer.start()
        assert self.keeper is not None
        self.keeper.start()
        self.task = asyncio.create_task(self.main_loop())

    async def stop(self) -> None:
        """Stop the loop and the watches, and hand the Lease over at once."""
        if self.task is not None:
            self.task.cancel()
        for informer in self.informers.values():
            informer.stop()
        if self.keeper is not None:
            await asyncio.to_thread(self.keeper.stop)
        if self.lease is not None and self.leading:
            await asyncio.to_thread(self.lease.release)

    # ------------------------------------------------------------------ signalling

    def notify(self) -> None:
        """The cluster changed (from any thread): wake the loop."""
        self.version += 1
        if self._event_loop is not None and self._wake is not None:
            self._event_loop.call_soon_threadsafe(self._wake.set)

    def kinds_changed(self, api_version_kind: tuple[str, str], established: bool) -> None:
        """A watched CRD (LeaderWorkerSet, MindCluster) appeared or went: build LeaderWorkerSets or
        StatefulSets, write MindIE rank tables or not; blocking (discovery)."""
        current = self.reconcile_settings
        if api_version_kind == LWS_API:
            if current.lws_available == established:
                return
            self.reconcile_settings = dataclasses.replace(current, lws_available=established)
        else:
            if current.mindcluster == established:
                return
            self.reconcile_settings = dataclasses.replace(current, mindcluster=established)
        if self.writer is not None:
            self.writer.kinds_changed()  # discovery must see the kind appear or go; apply everything again
        log.info("%s %s", api_version_kind[1], "installed" if established else "removed")
        self.notify()

    def _leadership_changed(self, leading: bool) -> None:
        """From the lease keeper's thread: a new term starts, or this process lost the Lease."""
        if leading:
            self.new_term.set()  # the loop forgets what an earlier term wrote before its next pass
            self.notify()
        elif self.leading:
            log.warning("lost the lease %s/%s; another operator decides now", self.settings.lease_namespace,
                        self.settings.lease_name)  # fmt: skip
        self.leading = leading
        self.metrics.state.set_leader(leading)

    # ------------------------------------------------------------------ the loop

    def _compact_node(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        name = str(body.get("metadata", {}).get("name"))
        labels = body.get("metadata", {}).get("labels") or {}
        if not selector_selects(equality_selector(self.settings.node_selector), labels):
            return name, None  # not (or no longer) in the pool
        return name, compact_node(body)

    def synced(self) -> bool:
        """Whether every watch has listed its kind once."""
        return bool(self.informers) and all(i.synced.is_set() for i in self.informers.values())

    def snapshot(self) -> Snapshot:
        """The watches' current views as plain lists, with what the node and pod watches changed since the last
        snapshot (each informer's views and changes are read at once, so they agree)."""
        nodes, node_changes = self.informers["nodes"].take()
        pods, pod_changes = self.informers["pods"].take()
        return Snapshot(
            nodes=nodes,
            pods=pods,
            changes=WatchChanges(node_changes, pod_changes),
            deployments=self.informers["deepseekdeployments"].values(),
            pdbs=self.informers["poddisruptionbudgets"].values(),
            failing_workloads=self.informers["failingworkloads"].values(),
            failed_creates=self.informers["failedcreates"].values(),
            cache_jobs=self.informers["modelcachejobs"].values() if "modelcachejobs" in self.informers else [],
        )

    def run_pass(self) -> None:
        """One pass if this process leads (blocking; on a worker thread)."""
        assert self.lease is not None and self.writer is not None and self.runner is not None
        if not self.lease.leading():
            return
        if self.new_term.is_set():
            self.new_term.clear()
            self.writer.ledger.new_term()
        if not self.writer.ledger.seeded:
            self.writer.seed(self.settings.namespaces)
        self.runner.run_pass(self.snapshot(), self.reconcile_settings, leader=self.leading)
        if self.first_pass_at is None:
            self.first_pass_at = time.monotonic()
            log.info("first pass done %.1f s after start", self.first_pass_at - self.started_at)
            # What the first lists and the first pass made lives long (views, the pool): out of the cyclic
            # collector's way, so that its full collections do not walk it on every later pass.
            gc.freeze()

    async def main_loop(self) -> None:
        """Run a pass whenever the cluster changed, and every resync period, once every watch has synced."""
        assert self._wake is not None
        while not self.synced():
            await asyncio.sleep(0.05)
        log.info("watches synced %.1f s after start", time.monotonic() - self.started_at)
        last_reapply = time.monotonic()
        while True:
            self._wake.clear()
            try:
                await asyncio.to_thread(self.run_pass)
            except NotLeadingError:
                log.warning("lost the lease during a pass; stopped writing")
            except Exception:  # never let one bad pass stop the operator; the next starts from the cluster
                log.exception("reconcile pass failed (will retry)")
            timeout = min(self.settings.resync_seconds, max(1.0, self.settings.lease_seconds / 5))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                await asyncio.sleep(self.settings.debounce_seconds)  # let a burst settle into one pass
            except TimeoutError:
                pass
            if time.monotonic() - last_reapply > REAPPLY_SECONDS and self.writer is not None:
                last_reapply = time.monotonic()
                self.writer.ledger.forget_objects()  # apply everything again, restoring objects edited by hand


def _compact_pod(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    return pod_key(body), compact_pod(body)  # the pool kept between passes knows pods by namespace/name


def _by_uid(compact: Any) -> Any:
    def keyed(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        return str(body.get("metadata", {}).get("uid")), compact(body)

    return keyed
