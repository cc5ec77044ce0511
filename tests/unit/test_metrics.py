"""Metric families built from a reconcile pass."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from dspool.api import DeepSeekDeploymentStatus, NodeDevices, Phase, ReplicaPlacement
from dspool.catalog import Precision, builtin_catalog
from dspool.inventory import Reservation, build_pool
from dspool.metrics import DeploymentSample, PassCollector, PassSample
from dspool.sizing import Backend

CATALOG = builtin_catalog()


def node(name: str, accelerator: str) -> dict:
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
