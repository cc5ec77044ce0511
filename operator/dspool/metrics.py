"""Prometheus metrics of the pool and the deployments, rebuilt from each reconcile pass.

The families are a pure function of the pool and the statuses the pass wrote (:func:`metric_families`);
:class:`PassCollector` serves the latest pass at ``/metrics`` of ``dspool run --metrics-port``. Names:

- ``dspool_pool_nodes{accelerator}``, ``dspool_pool_devices{accelerator,state}`` with state
  allocatable | used | reserved | free: utilization per accelerator type;
- ``dspool_pool_fragmentation_ratio{accelerator}``: share of free devices stranded on partly used nodes
  (what a whole-node replica cannot use; see docs/placement.md);
- ``dspool_deployment_replicas{namespace,deployment,state}`` with state desired | placed | ready, and
  ``dspool_deployment_phase{namespace,deployment,phase}`` (1 for the current phase);
- ``dspool_reconcile_passes_total``, ``dspool_reconcile_pass_seconds`` (last pass), ``dspool_leader``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dspool.api import DeepSeekDeploymentStatus, Phase
from dspool.inventory import Pool
from dspool.placement import fragmentation


@dataclass
class DeploymentSample:
    """What one pass decided for one DSD."""

    namespace: str
    name: str
    desired: int
    status: DeepSeekDeploymentStatus


@dataclass
class PassSample:
    """Everything the metrics of one reconcile pass are made of."""

    pool: Pool | None = None
    deployments: list[DeploymentSample] = field(default_factory=list)
    seconds: float = 0.0
    leader: bool = False


def metric_families(sample: PassSample, passes: int) -> list[Metric]:
    """The metric families of one pass (pure)."""
    nodes = GaugeMetricFamily("dspool_pool_nodes", "Nodes in the pool per accelerator type", labels=["accelerator"])
    devices = GaugeMetricFamily(
        "dspool_pool_devices", "Devices per accelerator type and state", labels=["accelerator", "state"]
    )
    frag = GaugeMetricFamily(
        "dspool_pool_fragmentation_ratio",
        "Share of free devices stranded on partly used nodes, per accelerator type",
        labels=["accelerator"],
    )
    if sample.pool is not None:
        stranded = fragmentation(sample.pool)
        for accelerator, totals in sorted(sample.pool.totals().items()):
            nodes.add_metric([accelerator], totals.nodes)
            for state in ("allocatable", "used", "reserved", "free"):
                devices.add_metric([accelerator, state], getattr(totals, state))
            frag.add_metric([accelerator], stranded.get(accelerator, 0.0))
    replicas = GaugeMetricFamily(
        "dspool_deployment_replicas",
        "Replicas of a DeepSeekDeployment: desired, placed (devices reserved), ready",
        labels=["namespace", "deployment", "state"],
    )
    phases = GaugeMetricFamily(
        "dspool_deployment_phase",
        "1 for the phase a DeepSeekDeployment is in",
        labels=["namespace", "deployment", "phase"],
    )
    for item in sorted(sample.deployments, key=lambda d: (d.namespace, d.name)):
        labels = [item.namespace, item.name]
        replicas.add_metric([*labels, "desired"], item.desired)
        replicas.add_metric([*labels, "placed"], len(item.status.placements))
        replicas.add_metric([*labels, "ready"], item.status.ready_replicas)
        for phase in Phase:
            phases.add_metric([*labels, phase.value], 1.0 if item.status.phase == phase else 0.0)
    total = CounterMetricFamily("dspool_reconcile_passes", "Reconcile passes run by this operator")
    total.add_metric([], passes)
    seconds = GaugeMetricFamily("dspool_reconcile_pass_seconds", "Duration of the last reconcile pass")
    seconds.add_metric([], sample.seconds)
    leader = GaugeMetricFamily("dspool_leader", "1 when this operator holds the Lease and decides")
    leader.add_metric([], 1.0 if sample.leader else 0.0)
    return [nodes, devices, frag, replicas, phases, total, seconds, leader]


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
            families: Sequence[Metric] = metric_families(self._sample, self._passes)
        yield from families
