"""Pure helpers of the watches: selectors, compaction, which nodes keep their replicas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dspool.api import DEPLOYMENT_LABEL
from dspool.inventory import is_pod_active, pod_device_requests
from dspool.selectors import equality_selector, selector_selects
from dspool.views import compact_node, compact_pod, parse_selector, present_nodes
from dspool.workloads.mindie import ASCEND_DEVICE_ANNOTATION

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def node(name: str, ready: str = "True", since: datetime = NOW, unschedulable: bool = False) -> dict[str, Any]:
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return compact_node({
        "metadata": {"name": name, "labels": {}},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": stamp, "lastHeartbeatTime": stamp},
            {"type": "MemoryPressure", "status": "False"}]},
    })  # fmt: skip


def test_selector_parsing_and_matching() -> None:
    selector = parse_selector("dspool.io/pool=a, gpu")
    assert selector == {"dspool.io/pool": "a", "gpu": ""}
    assert selector_selects(equality_selector(selector), {"dspool.io/pool": "a", "gpu": "yes"})
    assert not selector_selects(equality_selector(selector), {"dspool.io/pool": "b", "gpu": "yes"})
    assert not selector_selects(equality_selector(selector), {"dspool.io/pool": "a"})  # gpu must exist
    with pytest.raises(ValueError, match="bad label selector"):
        parse_selector("=x")


def test_heartbeats_do_not_change_the_compacted_node() -> None:
    first = node("n")
    later = compact_node({"metadata": {"name": "n", "labels": {}}, "spec": {}, "status": {"conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "lastHeartbeatTime": (NOW + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}]}})  # fmt: skip
    assert first == later


def test_nodes_not_ready_briefly_or_cordoned_keep_their_replicas() -> None:
    nodes = [
        node("ready"),
        node("cordoned", unschedulable=True),
        node("blip", ready="Unknown", since=NOW - timedelta(seconds=10)),
        node("down", ready="False", since=NOW - timedelta(minutes=5)),
    ]
    assert present_nodes(nodes, NOW, grace_seconds=60) == {"ready", "cordoned", "blip"}


def test_pods_without_devices_or_dspool_labels_are_not_kept() -> None:
    plain = {"metadata": {"name": "web", "labels": {}}, "spec": {"containers": [{"name": "c"}]}, "status": {}}
    assert compact_pod(plain) is None
    sidecar = {
        "metadata": {"name": "p", "namespace": "x", "labels": {}},
        "spec": {"nodeName": "n", "containers": [{"name": "c"}], "initContainers": [
            {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip
    kept = compact_pod(sidecar)
    assert kept is not None and pod_device_requests(kept) == {"nvidia.com/gpu": 1}  # the sidecar keeps running


def workload_pod(name: str, node: str, **spec: Any) -> dict[str, Any]:
    """Another workload's pod, as the API returns it (the parts that matter here)."""
    return {
        "metadata": {"name": name, "namespace": "team", "uid": f"u-{name}", "labels": {"app": "train"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"nodeName": node, **spec},
        "status": {"phase": "Running", "podIP": "10.0.0.9",
                   "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None}]},
    }  # fmt: skip


NO_ROOM = "0/5 nodes are available: 1 Insufficient nvidia.com/gpu."
GPU = {"requests": {"nvidia.com/gpu": "2", "cpu": "4"}, "limits": {"nvidia.com/gpu": "2"}}


@pytest.mark.parametrize(
    "spec",
    [
        {"containers": [{"name": "a", "resources": GPU},
                        {"name": "b", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
        {"containers": [{"name": "a", "resources": GPU}],  # an init container needing more than the app: its peak
         "initContainers": [{"name": "warm", "resources": {"requests": {"nvidia.com/gpu": "4"}}}]},
        {"containers": [{"name": "a", "resources": GPU}],  # a sidecar runs beside the app: added
         "initContainers": [{"name": "s", "restartPolicy": "Always",
                             "resources": {"requests": {"huawei.com/Ascend910": "1"}}}]},
    ],
)  # fmt: skip
def test_another_workloads_pod_counts_the_same_devices_on_the_same_node(spec: dict[str, Any]) -> None:
    pod = workload_pod("p", "n1", **spec)
    kept = compact_pod(pod)
    assert kept is not None
    assert pod_device_requests(kept) == pod_device_requests(pod) != {}
    assert kept["spec"]["nodeName"] == "n1" and is_pod_active(kept)
    assert (kept["metadata"]["name"], kept["metadata"]["namespace"]) == ("p", "team")
    finished = compact_pod({**pod, "status": {"phase": "Succeeded"}})
    assert finished is not None and not is_pod_active(finished)  # its devices are free again
    deleting = compact_pod({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-12-05T00:00:00Z"}})
    assert deleting is not None and deleting["metadata"]["deletionTimestamp"] == "2026-12-05T00:00:00Z"


def test_dspool_pods_keep_what_readiness_replacement_and_rank_tables_read() -> None:
    pod = workload_pod("r1-0", "n1", containers=[{"name": "engine", "resources": GPU, "image": "vllm"}])
    pod["metadata"]["labels"] = {DEPLOYMENT_LABEL: "r1", "dspool.io/replica": "0"}
    pod["metadata"]["annotations"][ASCEND_DEVICE_ANNOTATION] = '{"pod_name": "r1-0"}'
    pod["status"] = {"phase": "Pending", "podIP": "10.0.0.9", "hostIP": "192.168.0.1", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastProbeTime": None,
         "message": NO_ROOM, "lastTransitionTime": "t0"}]}  # fmt: skip
    kept = compact_pod(pod)
    assert kept is not None
    assert kept["metadata"]["labels"] == pod["metadata"]["labels"]
    assert kept["metadata"]["annotations"] == {ASCEND_DEVICE_ANNOTATION: '{"pod_name": "r1-0"}'}
    assert (kept["status"]["podIP"], kept["status"]["hostIP"]) == ("10.0.0.9", "192.168.0.1")
    assert kept["status"]["conditions"] == [
        {"type": "PodScheduled", "status": "False", "lastTransitionTime": "t0", "message": NO_ROOM}
    ]
    assert kept["spec"]["containers"] == [{"name": "engine", "resources": GPU}]
    assert pod_device_requests(kept) == {"nvidia.com/gpu": 2}


def test_nodes_keep_what_inventory_reads_and_share_what_they_repeat() -> None:
    def full_node(name: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "uid": f"u-{name}", "labels": {"nvidia.com/gpu.product": "NVIDIA-L20",
                         "kubernetes.io/hostname": name}, "managedFields": [{"manager": "kwok"}]},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "126"}, "capacity": {"nvidia.com/gpu": "8"},
                       "images": [{"names": ["x"], "sizeBytes": 1}],
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t0",
                                       "lastHeartbeatTime": name, "reason": "KubeletReady"},
                                      {"type": "DiskPressure", "status": "False"}]},
        }  # fmt: skip

    # json.loads gives every node its own copy of every string, as the API server's JSON does
    a, b = (compact_node(json.loads(json.dumps(full_node(name)))) for name in ("a", "b"))
    assert a == {
        "metadata": {"name": "a", "uid": "u-a", "labels": {"nvidia.com/gpu.product": "NVIDIA-L20",
                                                          "kubernetes.io/hostname": "a"}},
        "spec": {"unschedulable": False,
                 "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "126"}, "capacity": {"nvidia.com/gpu": "8"},
                   "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}]},
    }  # fmt: skip
    assert a["spec"]["taints"] is b["spec"]["taints"]
    assert a["status"]["allocatable"] is b["status"]["allocatable"]
    assert a["status"]["conditions"] is b["status"]["conditions"]
    product = "nvidia.com/gpu.product"
    assert a["metadata"]["labels"][product] is b["metadata"]["labels"][product]  # one string for 5,000 nodes
