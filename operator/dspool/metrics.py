"""Prometheus metrics of the pool, the deployments and the operator itself.

Two kinds of families, both served at ``/metrics`` of ``dspool run --metrics-port``:

- **State of the last pass**, a pure function of what the pass saw and decided (:func:`metric_families`),
  rebuilt at each scrape by :class:`PassCollector`:
  ``dspool_pool_nodes{accelerator}``; ``dspool_pool_devices{accelerator,state}`` (allocatable, used,
  reserved, free); ``dspool_pool_fragmentation_ratio{accelerator}``;
  ``dspool_pool_placeable_replicas{model,accelerator}`` (further replicas of each catalog model that fit
  now, default sizing, per type and ``accelerator="all"``); ``dspool_pool_whole_free_nodes{accelerator}``;
  ``dspool_pool_stranded_devices{accelerator}`` (free devices the demand mix cannot use where they are);
  ``dspool_node_devices{node,accelerator,state}`` (switchable off for very large pools);
  ``dspool_deployment_replicas{namespace,deployment,state}`` (desired, placed, ready),
  ``dspool_deployment_phase{namespace,deployment,phase}``,
  ``dspool_deployment_pending_replicas{namespace,deployment}`` and
  ``dspool_deployment_pending_seconds{namespace,deployment}`` (how long the DSD has waited for room);
  ``dspool_replica_info{namespace,deployment,replica,pod,node,accelerator,backend}`` = 1 per serving pod,
  to join GPU/NPU exporter and engine series to DSDs on ``namespace`` and ``pod``;
  ``dspool_reconcile_passes_total``, ``dspool_reconcile_pass_seconds`` (last pass), ``dspool_leader``.
  Pool, node and DSD families come from the Lease holder only (a standby's would duplicate them).
- **Cumulative** (:class:`OperatorMetrics`): ``dspool_reconcile_pass_duration_seconds`` and
  ``dspool_placement_decision_seconds`` (histograms), ``dspool_api_write_errors_total{verb,kind,code}``
  (409 = a conflict), ``dspool_api_requests_total{verb,kind}`` (every write and list the operator makes;
  watches and the Lease excluded), ``dspool_events_posted_total{type,reason}``,
  ``dspool_rebalance_moves_total{event}`` (planned, started, finished, rolled_back),
  ``dspool_rebalance_devices_freed_total``, ``dspool_model_fetches_total{event}`` (started, finished, failed) and
  ``dspool_model_fetch_duration_seconds`` (histogram).
- **The node model cache** (with ``--model-cache``): ``dspool_model_cache_bytes{entry,state}`` and
  ``dspool_model_cache_nodes{entry,state}`` (entries x 4 series, whatever the pool size), and
  ``dspool_node_model_cache_bytes{node}`` (with node metrics on).

Cardinality grows with models x types (~150), DSDs x 12, serving pods, and, with node metrics on,
nodes x 3. :data:`METRIC_NAMES` lists every family, so dashboards and alerts can be checked against it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dspool.api import REPLICA_LABEL, DeepSeekDeploymentStatus, Phase
from dspool.catalog import Catalog, ModelSpec
from dspool.inventory import Pool
from dspool.placement import fragmentation
from dspool.placement.fleet import placeable_replicas, stranded_devices, whole_free_nodes
from dspool.weights.state import CacheView, EntryState

PASS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
FETCH_BUCKETS = (60, 300, 600, 1200, 1800, 3600, 5400, 7200, 10800, 21600)  # a 641 GiB entry: ~1 h at 200 MB/s
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DEVICE_STATES = ("allocatable", "used", "reserved", "free")

METRIC_NAMES = frozenset(
    {
        "dspool_pool_nodes",
        "dspool_pool_devices",
        "dspool_pool_fragmentation_ratio",
        "dspool_pool_placeable_replicas",
        "dspool_pool_whole_free_nodes",
        "dspool_pool_stranded_devices",
        "dspool_node_devices",
        "dspool_deployment_replicas",
        "dspool_deployment_phase",
        "dspool_deployment_pending_replicas",
        "dspool_deployment_pending_seconds",
        "dspool_replica_info",
        "dspool_reconcile_passes_total",
        "dspool_reconcile_pass_seconds",
        "dspool_leader",
        "dspool_reconcile_pass_duration_seconds",
        "dspool_placement_decision_seconds",
        "dspool_api_write_errors_total",
        "dspool_api_requests_total",
        "dspool_api_request_duration_seconds",
        "dspool_events_posted_total",
        "dspool_rebalance_moves_total",
        "dspool_rebalance_devices_freed_total",
        "dspool_model_cache_bytes",
        "dspool_model_cache_nodes",
        "dspool_node_model_cache_bytes",
        "dspool_model_fetches_total",
        "dspool_model_fetch_duration_seconds",
    }
)
CACHE_STATES = tuple(state.value for state in EntryState)
FETCH_EVENTS = ("started", "finished", "failed")


@dataclass
class DeploymentSample:
    """What one pass decided for one DSD, and its serving pods as the pass saw them."""

    namespace: str
    name: str
    desired: int
    status: DeepSeekDeploymentStatus
    pods: Sequence[Mapping[str, Any]] = ()


@dataclass
class PassSample:
    """Everything the state metrics of one reconcile pass are made of.

    ``demand``: the models of the DSDs in the cluster (the catalog's when there are none), for stranded
    devices; ``catalog``: whose models the placeable counts cover (None: no capacity families).
    """

    pool: Pool | None = None
    deployments: list[DeploymentSample] = field(default_factory=list)
    seconds: float = 0.0
    leader: bool = False
    catalog: Catalog | None = None
    demand: Sequence[ModelSpec] = ()
    node_metrics: bool = True
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    model_cache: CacheView | None = None  # what every node's model cache holds (None: no model cache)


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _pool_families(sample: PassSample) -> list[Metric]:
    nodes = _gauge("dspool_pool_nodes", "Nodes in the pool per accelerator type", ["accelerator"])
    devices = _gauge("dspool_pool_devices", "Devices per accelerator type and state", ["accelerator", "state"])
    frag = _gauge(
        "dspool_pool_fragmentation_ratio",
        "Share of free devices stranded on partly used nodes, per accelerator type",
        ["accelerator"],
    )
    whole = _gauge(
        "dspool_pool_whole_free_nodes", "Nodes with every device free, per accelerator type", ["accelerator"]
    )
    stranded = _gauge(
        "dspool_pool_stranded_devices",
        "Free devices no replica of the current demand mix can use on the node they are on",
        ["accelerator"],
    )
    placeable = _gauge(
        "dspool_pool_placeable_replicas",
        "Further replicas of a catalog model (default sizing, binpack) that fit now; accelerator=all is the total",
        ["model", "accelerator"],
    )
    per_node = _gauge("dspool_node_devices", "Devices of one node by state", ["node", "accelerator", "state"])
    families: list[Metric] = [nodes, devices, frag, whole, stranded, placeable, per_node]
    pool = sample.pool
    if pool is None:
        return families
    ratios = fragmentation(pool)
    for accelerator, totals in sorted(pool.totals().items()):
        nodes.add_metric([accelerator], totals.nodes)
        for state in DEVICE_STATES:
            devices.add_metric([accelerator, state], getattr(totals, state))
        frag.add_metric([accelerator], ratios.get(accelerator, 0.0))
    for accelerator, count in sorted(whole_free_nodes(pool).items()):
        whole.add_metric([accelerator], count)
    if sample.catalog is not None:
        demand = list(sample.demand) or list(sample.catalog.models)
        for accelerator, count in sorted(stranded_devices(pool, demand, sample.catalog).items()):
            stranded.add_metric([accelerator], count)
        for model, per_type in placeable_replicas(pool, list(sample.catalog.models), sample.catalog).items():
            for accelerator, count in sorted(per_type.items()):
                placeable.add_metric([model, accelerator], count)
    if sample.node_metrics:
        for name in sorted(pool.nodes):
            node = pool.nodes[name]
            for state, value in (("used", node.used), ("reserved", node.reserved), ("free", node.free)):
                per_node.add_metric([name, node.accelerator, state], value)
    return families


def _cache_families(sample: PassSample) -> list[Metric]:
    """Per entry and state, the bytes and nodes of the node model cache (entries x 4 series, whatever the pool
    size); per node, the bytes it holds (with node metrics on)."""
    size = _gauge("dspool_model_cache_bytes", "Bytes of a cache entry over all nodes, by state", ["entry", "state"])
    count = _gauge("dspool_model_cache_nodes", "Nodes holding a cache entry, by state", ["entry", "state"])
    per_node = _gauge("dspool_node_model_cache_bytes", "Bytes a node's model cache holds or is fetching", ["node"])
    view = sample.model_cache
    if view is None:
        return [size, count, per_node]
    totals: dict[tuple[str, str], list[int]] = {}
    for cache in view.nodes.values():
        for entry in cache.entries.values():
            held = entry.size_bytes if entry.state == EntryState.READY else entry.bytes_done
            bucket = totals.setdefault((entry.entry, entry.state.value), [0, 0])
            bucket[0] += held
            bucket[1] += 1
    for entry_id in sorted({entry for entry, _ in totals}):
        for state in CACHE_STATES:
            held, nodes = totals.get((entry_id, state), [0, 0])
            size.add_metric([entry_id, state], held)
            count.add_metric([entry_id, state], nodes)
    if sample.node_metrics:
        for name in sorted(view.nodes):
            per_node.add_metric([name], view.nodes[name].used_bytes)
    return [size, count, per_node]


def _pending_since(status: DeepSeekDeploymentStatus) -> datetime | None:
    for condition in status.conditions:
        if condition.type == "Scheduled" and condition.status == "False" and condition.last_transition_time:
            try:
                return datetime.fromisoformat(condition.last_transition_time.replace("Z", "+00:00"))
            except ValueError:
                return None
    return None


def _deployment_families(sample: PassSample) -> list[Metric]:
    labels = ["namespace", "deployment"]
    replicas = _gauge(
        "dspool_deployment_replicas",
        "Replicas of a DeepSeekDeployment: desired, placed (devices reserved), ready",
        [*labels, "state"],
    )
    phases = _gauge("dspool_deployment_phase", "1 for the phase a DeepSeekDeployment is in", [*labels, "phase"])
    pending = _gauge("dspool_deployment_pending_replicas", "Replicas asked for but not placed (no room)", labels)
    waited = _gauge(
        "dspool_deployment_pending_seconds", "How long the DeepSeekDeployment has waited for room (0 when none)", labels
    )
    info = _gauge(
        "dspool_replica_info",
        "1 per serving pod: joins exporter and engine series (namespace, pod) to DSDs, replicas and nodes",
        ["namespace", "deployment", "replica", "pod", "node", "accelerator", "backend"],
    )
    for item in sorted(sample.deployments, key=lambda d: (d.namespace, d.name)):
        key = [item.namespace, item.name]
        status = item.status
        replicas.add_metric([*key, "desired"], item.desired)
        replicas.add_metric([*key, "placed"], len(status.placements))
        replicas.add_metric([*key, "ready"], status.ready_replicas)
        for phase in Phase:
            phases.add_metric([*key, phase.value], 1.0 if status.phase == phase else 0.0)
        missing = 0 if status.phase == Phase.FAILED else max(0, item.desired - len(status.placements))
        pending.add_metric(key, missing)
        since = _pending_since(status) if missing else None
        waited.add_metric(key, max(0.0, (sample.at - since).total_seconds()) if since else 0.0)
        by_replica = {str(p.replica): p for p in status.placements}
        for pod in sorted(item.pods, key=lambda p: str(p["metadata"]["name"])):
            metadata = pod["metadata"]
            placement = by_replica.get(str(metadata.get("labels", {}).get(REPLICA_LABEL)))
            if placement is None or metadata.get("deletionTimestamp"):
                continue
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            info.add_metric(
                [*key, str(placement.replica), str(metadata["name"]), node, placement.accelerator,
                 placement.backend.value],
                1,
            )  # fmt: skip
    return [replicas, phases, pending, waited, info]


def metric_families(sample: PassSample, passes: int) -> list[Metric]:
    """The state families of one pass (pure).

    Only the Lease holder exports the pool and DSD families: a standby (or a demoted operator, whose last
    pass would otherwise stay on display) exports its leadership and pass counters only, so two operator
    pods never give two series per DSD (``sum`` counting every DSD twice, joins failing on duplicates).
    """
    total = CounterMetricFamily("dspool_reconcile_passes", "Reconcile passes run by this operator")
    total.add_metric([], passes)
    seconds = _gauge("dspool_reconcile_pass_seconds", "Duration of the last reconcile pass")
    seconds.add_metric([], sample.seconds)
    leader = _gauge("dspool_leader", "1 when this operator holds the Lease and decides")
    leader.add_metric([], 1.0 if sample.leader else 0.0)
    if not sample.leader:
        return [total, seconds, leader]
    return [*_pool_families(sample), *_deployment_families(sample), *_cache_families(sample), total, seconds, leader]


class PassCollector(Collector):
    """A Prometheus collector serving the latest pass (thread-safe: passes run in a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sample = PassSample()
        self._passes = 0

    def record(self, sample: PassSample) -> None:
        """Store the result of a finished pass."""
        with self._lock:
            self._sample = sample
            self._passes += 1

    def set_leader(self, leader: bool) -> None:
        """Record whether this operator holds the Lease (also between passes)."""
        with self._lock:
            self._sample.leader = leader

    def collect(self) -> Iterator[Metric]:
        """Called by the Prometheus client on each scrape."""
        with self._lock:
            sample, passes = self._sample, self._passes
        yield from metric_families(sample, passes)


class OperatorMetrics:
    """Every metric of one operator process, in its own registry (tests may run several in one process)."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: half the cumulative series, nothing a dashboard reads
        self.registry = CollectorRegistry()
        self.state = PassCollector()
        self.registry.register(self.state)
        self.pass_duration = Histogram(
            "dspool_reconcile_pass_duration_seconds", "Duration of reconcile passes", buckets=PASS_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.decision_duration = Histogram(
            "dspool_placement_decision_seconds", "Time to decide where one replica goes",
            buckets=DECISION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.write_errors = Counter(
            "dspool_api_write_errors", "API writes that failed, by verb, kind and HTTP code (409 = conflict)",
            ["verb", "kind", "code"], registry=self.registry,
        )  # fmt: skip
        self.api_requests = Counter(
            "dspool_api_requests", "API requests the operator made, by verb and kind (watches and the Lease excluded)",
            ["verb", "kind"], registry=self.registry,
        )  # fmt: skip
        self.api_request_seconds = Histogram(
            "dspool_api_request_duration_seconds", "Duration of the operator's API requests, by verb and kind",
            ["verb", "kind"], buckets=API_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.events_posted = Counter(
            "dspool_events_posted", "Kubernetes events posted on DeepSeekDeployments", ["type", "reason"],
            registry=self.registry,
        )  # fmt: skip

        self.rebalance_moves = Counter(
            "dspool_rebalance_moves", "Rebalancing moves by event: planned, started, finished, rolled_back",
            ["event"], registry=self.registry,
        )  # fmt: skip
        self.devices_freed = Counter(
            "dspool_rebalance_devices_freed", "Devices freed by finished moves", registry=self.registry
        )
        for event in ("planned", "started", "finished", "rolled_back"):
            self.rebalance_moves.labels(event)  # every series exists from the start (0), for rate()
        self.model_fetches = Counter(
            "dspool_model_fetches", "Model-cache fetches by event: started, finished, failed", ["event"],
            registry=self.registry,
        )  # fmt: skip
        for event in FETCH_EVENTS:
            self.model_fetches.labels(event)
        self.fetch_duration = Histogram(
            "dspool_model_fetch_duration_seconds", "Duration of finished model-cache fetches (the Job's start to its "
            "completion)", buckets=FETCH_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def record_fetches(self, started: int, failed: int, finished: Sequence[float]) -> None:
        """Fetch Jobs the pass created, and fetches that ended since the last pass (the seconds each took)."""
        for event, count in (("started", started), ("finished", len(finished)), ("failed", failed)):
            if count:
                self.model_fetches.labels(event).inc(count)
        for seconds in finished:
            self.fetch_duration.observe(seconds)

    def record_plan(self, moves: int, *, started: bool) -> None:
        """A rebalancing plan was found (and, unless it is a dry run, started)."""
        self.rebalance_moves.labels("planned").inc(moves)
        if started:
            self.rebalance_moves.labels("started").inc(moves)

    def record_moves(self, finished: int, rolled_back: int, devices_freed: int) -> None:
        """Moves of one DSD that finished or rolled back in a pass."""
        if finished:
            self.rebalance_moves.labels("finished").inc(finished)
            self.devices_freed.inc(devices_freed)
        if rolled_back:
            self.rebalance_moves.labels("rolled_back").inc(rolled_back)

    def record_pass(self, sample: PassSample, decision_seconds: Sequence[float] = ()) -> None:
        """A finished pass: its state, its duration and how long each placement decision took."""
        self.state.record(sample)
        self.pass_duration.observe(sample.seconds)
        for seconds in decision_seconds:
            self.decision_duration.observe(seconds)
