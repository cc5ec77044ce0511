"""Metric families built from a reconcile pass."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from dspool.api import Condition, DeepSeekDeploymentStatus, NodeDevices, Phase, ReplicaPlacement
from dspool.catalog import Precision, builtin_catalog
from dspool.inventory import Reservation, build_pool
from dspool.metrics import METRIC_NAMES, DeploymentSample, OperatorMetrics, PassCollector, PassSample
from dspool.sizing import Backend

CATALOG = builtin_catalog()


def node(name: str, accelerator: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": CATALOG.accelerator(accelerator).node_labels(8)},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_pool_utilization_fragmentation_and_deployments_are_exported() -> None:
    pool = build_pool(
        [node("h200-0", "H200-141G"), node("rtx-0", "RTX4090-24G"), node("rtx-1", "RTX4090-24G")],
        [],
        [Reservation(deployment="ai/small", replica=0, node="rtx-0", devices=3)],
        CATALOG,
    )
    placement = ReplicaPlacement(replica=0, accelerator="RTX4090-24G", precision=Precision.BF16, backend=Backend.VLLM,
                                 tensor_parallel=1, pipeline_parallel=1, max_model_len=4096,
                                 nodes=[NodeDevices(name="rtx-0", devices=3)])  # fmt: skip
    status = DeepSeekDeploymentStatus(phase=Phase.DEGRADED, placements=[placement], ready_replicas=1)
    collector = PassCollector()
    collector.record(PassSample(pool, [DeploymentSample("ai", "small", 2, status)], 0.05, leader=True))
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'dspool_pool_devices{accelerator="RTX4090-24G",state="reserved"} 3.0' in text
    assert 'dspool_pool_devices{accelerator="RTX4090-24G",state="free"} 13.0' in text
    assert 'dspool_pool_nodes{accelerator="H200-141G"} 1.0' in text
    # 5 of the 13 free RTX 4090s sit on the partly used node
    assert 'dspool_pool_fragmentation_ratio{accelerator="RTX4090-24G"} 0.38' in text
    assert 'dspool_deployment_replicas{deployment="small",namespace="ai",state="desired"} 2.0' in text
    assert 'dspool_deployment_phase{deployment="small",namespace="ai",phase="Degraded"} 1.0' in text
    assert 'dspool_deployment_phase{deployment="small",namespace="ai",phase="Ready"} 0.0' in text
    assert "dspool_reconcile_passes_total 1.0" in text and "dspool_leader 1.0" in text


def scrape(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_capacity_pending_replicas_and_serving_pods_are_exported() -> None:
    pool = build_pool(
        [node("h200-0", "H200-141G"), node("rtx-0", "RTX4090-24G"), node("rtx-1", "RTX4090-24G")],
        [],
        [Reservation(deployment="ai/small", replica=0, node="rtx-0", devices=3)],
        CATALOG,
    )
    placement = ReplicaPlacement(replica=0, accelerator="RTX4090-24G", precision=Precision.BF16, backend=Backend.VLLM,
                                 tensor_parallel=1, pipeline_parallel=1, max_model_len=4096,
                                 nodes=[NodeDevices(name="rtx-0", devices=3)])  # fmt: skip
    waiting = Condition(
        type="Scheduled", status="False", reason="Unschedulable", last_transition_time="2026-12-01T10:00:00Z"
    )
    status = DeepSeekDeploymentStatus(phase=Phase.DEGRADED, placements=[placement], conditions=[waiting])
    pod = {"metadata": {"name": "small-0-abc", "namespace": "ai", "labels": {"dspool.io/replica": "0"}},
           "spec": {"nodeName": "rtx-0"}}  # fmt: skip
    metrics = OperatorMetrics()
    sample = PassSample(pool, [DeploymentSample("ai", "small", 3, status, [pod])], 0.05, catalog=CATALOG, leader=True,
                        at=datetime(2026, 12, 1, 10, 5, tzinfo=UTC))  # fmt: skip
    metrics.record_pass(sample, [0.0004, 0.002])
    text = scrape(metrics)
    # R1 fits once: on the free H200 (the 4090s are too small); the 1.5B once per free 4090 (13)
    assert 'dspool_pool_placeable_replicas{accelerator="H200-141G",model="deepseek-r1"} 1.0' in text
    assert 'dspool_pool_placeable_replicas{accelerator="all",model="deepseek-r1"} 1.0' in text
    assert (
        'dspool_pool_placeable_replicas{accelerator="RTX4090-24G",model="deepseek-r1-distill-qwen-1.5b"} 13.0' in text
    )
    assert 'dspool_pool_whole_free_nodes{accelerator="RTX4090-24G"} 1.0' in text
    assert 'dspool_node_devices{accelerator="RTX4090-24G",node="rtx-0",state="reserved"} 3.0' in text
    assert 'dspool_deployment_pending_replicas{deployment="small",namespace="ai"} 2.0' in text
    assert 'dspool_deployment_pending_seconds{deployment="small",namespace="ai"} 300.0' in text
    assert (
        'dspool_replica_info{accelerator="RTX4090-24G",backend="vllm",deployment="small",namespace="ai",'
        'node="rtx-0",pod="small-0-abc",replica="0"} 1.0'
    ) in text
    assert "dspool_placement_decision_seconds_count 2.0" in text
    assert "dspool_reconcile_pass_duration_seconds_count 1.0" in text


def test_node_metrics_can_be_switched_off_and_write_errors_are_counted() -> None:
    pool = build_pool([node("h200-0", "H200-141G")], [], [], CATALOG)
    metrics = OperatorMetrics()
    metrics.record_pass(PassSample(pool, [], 0.01, catalog=CATALOG, node_metrics=False, leader=True))
    metrics.write_errors.labels("patch", "DeepSeekDeployment", "409").inc()
    text = scrape(metrics)
    assert "dspool_node_devices{" not in text
    assert 'dspool_api_write_errors_total{code="409",kind="DeepSeekDeployment",verb="patch"} 1.0' in text


def test_every_exported_family_is_listed_in_metric_names() -> None:
    pool = build_pool([node("h200-0", "H200-141G")], [], [], CATALOG)
    metrics = OperatorMetrics()
    metrics.record_pass(PassSample(pool, [], 0.01, catalog=CATALOG, leader=True))
    metrics.write_errors.labels("patch", "X", "500").inc()
    metrics.events_posted.labels("Normal", "Placed").inc()
    exported = {m.name + ("_total" if m.type == "counter" else "") for m in metrics.registry.collect()}
    assert exported == METRIC_NAMES


def test_a_standby_exports_its_leadership_only_and_a_demoted_leader_drops_its_pool_and_dsd_series() -> None:
    pool = build_pool([node("h200-0", "H200-141G")], [], [], CATALOG)
    status = DeepSeekDeploymentStatus(phase=Phase.READY, ready_replicas=1)
    pod = {"metadata": {"name": "r1-0-abc", "namespace": "ai", "labels": {"dspool.io/replica": "0"}}}
    metrics = OperatorMetrics()
    metrics.record_pass(PassSample(pool, [DeploymentSample("ai", "r1", 1, status, [pod])], 0.01, catalog=CATALOG,
                                   leader=True))  # fmt: skip
    leading = scrape(metrics)
    assert "dspool_leader 1.0" in leading and 'dspool_pool_devices{accelerator="H200-141G"' in leading
    assert 'dspool_deployment_replicas{deployment="r1"' in leading
    metrics.state.set_leader(False)  # the Lease was lost: the last pass must not stay on display
    standby = scrape(metrics)
    assert "dspool_leader 0.0" in standby and "dspool_reconcile_passes_total 1.0" in standby
    for family in ("dspool_pool_", "dspool_node_devices", "dspool_deployment_", "dspool_replica_info"):
        assert f"\n{family}" not in standby, family
    assert "dspool_reconcile_pass_duration_seconds_count 1.0" in standby  # process metrics stay
    metrics.state.set_leader(True)
    assert 'dspool_pool_devices{accelerator="H200-141G"' in scrape(metrics)
