"""The kopf layer: watch nodes, pods and DeepSeekDeployments into indexes; reconcile each DSD under one lock.

Handlers only read (indexes), call the pure core (:func:`dspool.reconcile.reconcile`) and write (status,
workloads, events). Every decision runs under one asyncio lock against one pool, so two deployments never
book the same device; reservations live in each DSD's ``status.placements``, so a restarted operator
rebuilds the pool from the cluster before it places anything (kopf fills every index before it calls
any other handler, and the reconcile loop starts from the first such call). No finalizers are added, so
DSDs can be deleted while the operator is down; owner references garbage-collect their workloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from dspool import api
from dspool.catalog import Catalog, load_catalog
from dspool.inventory import DEFAULT_FABRIC_LABEL, Pool, build_pool, pod_device_requests, reservations_from_status
from dspool.reconcile import ReconcileResult, ReconcileSettings, reconcile
from dspool.workloads import deployment_label_value, images_from_env

log = logging.getLogger("dspool")

# Kinds dspool creates for a DSD; those the last decision no longer wants are deleted.
REPLICA_KINDS = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
]
FIELD_MANAGER = "dspool"


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


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (equality only; ``k`` alone means the label exists) as a dict ('' = exists)."""
    selector: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if not key:
            raise ValueError(f"bad label selector part {part!r}")
        selector[key.strip()] = value.strip()
    return selector


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy an equality selector from :func:`parse_selector`."""
    return all(key in labels and (value == "" or labels[key] == value) for key, value in selector.items())


def compact_node(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node that inventory needs (keeps 5,000 nodes small in memory)."""
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    return {
        "metadata": {"name": metadata.get("name"), "labels": dict(metadata.get("labels") or {})},
        "spec": {"unschedulable": spec.get("unschedulable", False), "taints": list(spec.get("taints") or [])},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "capacity": dict(status.get("capacity") or {}),
            "conditions": [{"type": c.get("type"), "status": c.get("status")} for c in status.get("conditions") or []],
        },
    }


def compact_pod(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parts of a Pod that accounting and readiness need, or None for pods that hold no devices."""
    metadata = body.get("metadata", {})
    labels = dict(metadata.get("labels") or {})
    if not pod_device_requests(body) and api.DEPLOYMENT_LABEL not in labels:
        return None
    spec, status = body.get("spec", {}), body.get("status", {})

    def containers(key: str) -> list[dict[str, Any]]:
        return [{"name": c.get("name"), "resources": dict(c.get("resources") or {})} for c in spec.get(key) or []]

    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "labels": labels,
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": containers("containers"),
            "initContainers": containers("initContainers"),
        },
        "status": {"phase": status.get("phase"), "conditions": list(status.get("conditions") or [])},
    }


class Operator:
    """Shared state of the running operator: config, API clients, the lock and the change signal."""

    def __init__(self, cfg: OperatorConfig) -> None:
        self.cfg = cfg
        self.catalog: Catalog = load_catalog(cfg.catalog_path)
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.version = 0
        self.written_placements: dict[str, list[dict[str, Any]]] = {}  # uid -> what we last wrote
        self.applied: dict[tuple[str, str, str, str], str] = {}  # (apiVersion, kind, ns, name) -> hash
        self.desired_objects: dict[str, set[tuple[str, str, str]]] = {}  # uid -> (apiVersion, kind, name)
        self.posted_events: dict[str, set[tuple[str, str]]] = {}
        self.api_client: client.ApiClient | None = None
        self.dynamic: DynamicClient | None = None
        self.settings = ReconcileSettings(stuck_after_seconds=cfg.stuck_after_seconds)
        self.indexes: tuple[kopf.Index[Any, Any], kopf.Index[Any, Any], kopf.Index[Any, Any]] | None = None
        self.indexes_ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def connect(self) -> None:
        """Create API clients from the in-cluster config or the kubeconfig; detect LeaderWorkerSet."""
        try:
            config.load_incluster_config()
            self.api_client = client.ApiClient()
        except config.ConfigException:
            self.api_client = config.new_client_from_config()
        self.dynamic = DynamicClient(self.api_client)
        try:
            self.dynamic.resources.get(api_version="leaderworkerset.x-k8s.io/v1", kind="LeaderWorkerSet")
            lws = True
        except ResourceNotFoundError:
            lws = False
        images = images_from_env(os.environ)
        self.settings = ReconcileSettings(
            lws_available=lws, images=images, stuck_after_seconds=self.cfg.stuck_after_seconds
        )
        log.info("connected; LeaderWorkerSet %s", "available" if lws else "not installed (StatefulSets instead)")

    async def poke(self) -> None:
        """Tell every waiting deployment loop that the cluster changed."""
        async with self.changed:
            self.version += 1
            self.changed.notify_all()

    async def wait_for_change(self, seen: int, timeout: float) -> int:
        """Wait until something changed after version ``seen`` (or the resync timeout); debounce bursts."""
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(lambda: self.version != seen), timeout)
        await asyncio.sleep(self.cfg.debounce_seconds)
        return self.version

    def manages(self, namespace: str | None) -> bool:
        """Whether DSDs in this namespace are ours."""
        return not self.cfg.namespaces or namespace in self.cfg.namespaces

    def build_pool(self, nodes: kopf.Index[Any, Any], pods: kopf.Index[Any, Any], dsds: kopf.Index[Any, Any]) -> Pool:
        """The pool as the indexes (plus our own not-yet-echoed status writes) describe it."""
        reservations = []
        live = set()
        for uid in list(dsds.keys()):
            for entry in dsds.get(uid, []):
                live.add(uid)
                status = entry.get("status") or {}
                if uid in self.written_placements:
                    status = {"placements": self.written_placements[uid]}
                parsed = api.placements_from_status(status)
                meta = entry["metadata"]
                reservations.extend(reservations_from_status(meta["namespace"], meta["name"], parsed))
        for uid in list(self.written_placements):
            if uid not in live:
                del self.written_placements[uid]
        node_bodies = [body for name in list(nodes.keys()) for body in nodes.get(name, [])]
        pod_bodies = [body for uid in list(pods.keys()) for body in pods.get(uid, [])]
        return build_pool(node_bodies, pod_bodies, reservations, self.catalog, self.cfg.fabric_label)

    def capture(self, nodes: kopf.Index[Any, Any], pods: kopf.Index[Any, Any], dsds: kopf.Index[Any, Any]) -> None:
        """Keep kopf's live index views; kopf hands them out only once every index is fully listed."""
        if self.indexes is None:
            self.indexes = (nodes, pods, dsds)
            self.indexes_ready.set()

    async def main_loop(self) -> None:
        """Reconcile every managed DSD whenever nodes, pods or DSDs change, and every resync period."""
        await self.indexes_ready.wait()
        while True:
            seen = self.version
            try:
                await self.reconcile_all()
            except Exception:  # never crash on odd input; the next pass starts from the cluster again
                log.exception("reconcile pass failed (will retry)")
            await self.wait_for_change(seen, self.cfg.resync_seconds)

    async def reconcile_all(self) -> list[ReconcileResult]:
        """One pass: one pool, every DSD in creation order, reserving as it goes; then write."""
        assert self.indexes is not None
        nodes, pods, dsds = self.indexes
        results = []
        async with self.lock:
            pool = self.build_pool(nodes, pods, dsds)
            bodies = [body for uid in list(dsds.keys()) for body in dsds.get(uid, [])]
            bodies.sort(key=lambda b: (b["metadata"].get("creationTimestamp") or "", b["metadata"]["name"]))
            pods_by_deployment: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for uid in list(pods.keys()):
                for pod in pods.get(uid, []):
                    owner = pod["metadata"]["labels"].get(api.DEPLOYMENT_LABEL)
                    if owner:
                        pods_by_deployment.setdefault((pod["metadata"]["namespace"], owner), []).append(pod)
            for body in bodies:
                metadata = body["metadata"]
                if not self.manages(metadata["namespace"]) or metadata.get("deletionTimestamp"):
                    continue
                uid, namespace, name = metadata["uid"], metadata["namespace"], metadata["name"]
                current = dict(body)
                if uid in self.written_placements:
                    current["status"] = {**(body.get("status") or {}), "placements": self.written_placements[uid]}
                own_pods = pods_by_deployment.get((namespace, deployment_label_value(name)), [])
                result = reconcile(current, self.catalog, pool, own_pods, datetime.now(UTC), self.settings)
                status = result.status.wire()
                # Persist reservations before creating workloads: a restart then sees every booked device.
                # A failed write ends the pass: the pool in memory would no longer match the cluster.
                try:
                    await asyncio.to_thread(self._write_status, namespace, name, status, current.get("status") or {})
                except ApiException as exc:
                    log.warning("status write for %s/%s failed: %s %s", namespace, name, exc.status, exc.reason)
                    break
                self.written_placements[uid] = status.get("placements", [])
                results.append((body, result))
        for body, result in results:
            metadata = body["metadata"]
            try:
                await asyncio.to_thread(
                    self._apply_objects, metadata["uid"], metadata["namespace"], metadata["name"], result
                )
                await asyncio.to_thread(self._post_events, body, result)
            except ApiException as exc:
                log.warning(
                    "writing objects of %s/%s failed: %s %s",
                    metadata["namespace"],
                    metadata["name"],
                    exc.status,
                    exc.reason,
                )
        return [result for _, result in results]

    def _write_status(self, namespace: str, name: str, status: dict[str, Any], old: Mapping[str, Any]) -> None:
        if _same(status, old):
            return
        custom = client.CustomObjectsApi(self.api_client)
        # A merge patch replaces lists wholesale; fields we no longer set are cleared explicitly.
        patch = {key: None for key in old if key not in status} | status
        custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}
        )

    def _apply_objects(self, uid: str, namespace: str, name: str, result: ReconcileResult) -> None:
        assert self.dynamic is not None
        for obj in result.objects:
            key = (obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"])
            digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
            if self.applied.get(key) == digest:
                continue
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(
                body=obj,
                name=obj["metadata"]["name"],
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
            self.applied[key] = digest
        wanted = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in result.objects}
        if self.desired_objects.get(uid) == wanted:
            return
        self._delete_stale(namespace, name, wanted)
        self.desired_objects[uid] = wanted

    def _delete_stale(self, namespace: str, name: str, wanted: set[tuple[str, str, str]]) -> None:
        """Delete the DSD's objects that the last decision no longer wants (removed or re-planned replicas)."""
        assert self.dynamic is not None
        for api_version, kind in REPLICA_KINDS:
            try:
                resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                continue
            selector = f"{api.DEPLOYMENT_LABEL}={deployment_label_value(name)}"
            for item in resource.get(namespace=namespace, label_selector=selector).items:
                if (api_version, kind, item.metadata.name) in wanted:
                    continue
                try:
                    resource.delete(
                        name=item.metadata.name, namespace=namespace, body={"propagationPolicy": "Background"}
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                self.applied.pop((api_version, kind, namespace, item.metadata.name), None)

    def _post_events(self, body: Mapping[str, Any], result: ReconcileResult) -> None:
        metadata = body.get("metadata", {})
        uid = metadata["uid"]
        posted = self.posted_events.setdefault(uid, set())
        core = client.CoreV1Api(self.api_client)
        now = datetime.now(UTC)
        for event in result.events:
            if (event.reason, event.message) in posted:
                continue
            posted.add((event.reason, event.message))
            core.create_namespaced_event(
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
            )
            log.info("%s/%s %s: %s", metadata["namespace"], metadata["name"], event.reason, event.message)


def _same(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return json.dumps(new, sort_keys=True, default=str) == json.dumps(dict(old), sort_keys=True, default=str)


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
    """Connect, and keep kopf quiet: dspool posts its own events and adds no finalizers."""
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dspool.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="dspool.io")
    op = _operator()
    await asyncio.to_thread(op.connect)
    op.task = asyncio.create_task(op.main_loop())


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate like the kubernetes client does (in-cluster or kubeconfig)."""
    return kopf.login_via_client(**kwargs)


@kopf.index("", "v1", "nodes")
async def nodes_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Nodes that belong to the pool, compacted."""
    op = _operator()
    labels = body.get("metadata", {}).get("labels") or {}
    await op.poke()
    return {name: compact_node(body)} if selector_matches(op.cfg.node_selector, labels) else {}


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


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def deployment_event(**kwargs: Any) -> None:
    """Any DSD change: hand the indexes (kwargs named after the index functions) to the loop and wake it."""
    op = _operator()
    op.capture(kwargs["nodes_index"], kwargs["pods_index"], kwargs["deployments_index"])
    await op.poke()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop the reconcile loop with the operator."""
    op = _operator()
    if op.task is not None:
        op.task.cancel()


def run(cfg: OperatorConfig, liveness_port: int | None = 8080, verbose: bool = False) -> None:
    """Run the operator until interrupted (``dspool run``)."""
    register(cfg)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    os.environ.setdefault("KOPF_STANDALONE", "1")
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=liveness)
