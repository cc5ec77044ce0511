"""Decoding the watches' JSON to the fields dspool reads: the views are those of a whole decode."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dspool.api import DEPLOYMENT_LABEL
from dspool.kube import decode
from dspool.views import compact_node, compact_pod
from dspool.workloads.mindie import ASCEND_DEVICE_ANNOTATION

STAMP = "2026-12-05T04:43:35Z"


def api_node(name: str) -> dict[str, Any]:
    """A node as the API server sends it: managed fields, every condition, images, addresses."""
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "42", "creationTimestamp": STAMP,
                     "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
                                "kubernetes.io/hostname": name, "dspool.io/fabric": "rack-a"},
                     "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "managedFields": [{"manager": "kwok", "fieldsV1": {"f:status": {"f:conditions": {}}}}]},
        "spec": {"unschedulable": True, "podCIDR": "10.0.0.0/24", "taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": STAMP}]},
        "status": {
            "capacity": {"cpu": "192", "nvidia.com/gpu": "8"}, "allocatable": {"cpu": "190", "nvidia.com/gpu": "8"},
            "conditions": [{"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": STAMP},
                           {"type": "Ready", "status": "False", "lastHeartbeatTime": STAMP, "lastTransitionTime": STAMP,
                            "reason": "KubeletNotReady", "message": "container runtime is down"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "images": [{"names": ["vllm/vllm-openai:v0.8.5"], "sizeBytes": 9_000_000_000}],
            "nodeInfo": {"kubeletVersion": "v1.36.3"},
        },
    }  # fmt: skip


def api_pod(name: str, labels: dict[str, str], gpus: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A bound pod as the API server sends it (one app container, a sidecar, status)."""
    resources = {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "8"}, "requests": {"cpu": "8", "memory": "64Gi"}}
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "7", "labels": labels,
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{" * 200,
                                     **(annotations or {})},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "x", "controller": True}],
                     "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"nodeName": "h100-0", "restartPolicy": "Always",
                 "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}],
                 "containers": [{"name": "engine", "image": "vllm", "env": [{"name": "A", "value": "1"}],
                                 "resources": resources, "ports": [{"containerPort": 8000}]}],
                 "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                                     "resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running", "podIP": "10.1.0.5", "hostIP": "10.0.0.1", "qosClass": "Burstable",
                   "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                                   "lastTransitionTime": STAMP},
                                  {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                   "lastTransitionTime": STAMP}],
                   "containerStatuses": [{"name": "engine", "ready": True, "restartCount": 0}]},
    }  # fmt: skip


def page(kind: str, items: list[dict[str, Any]], token: str | None) -> bytes:
    metadata = {"resourceVersion": "99", **({"continue": token} if token else {})}
    return json.dumps({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": items}).encode()


PODS = [
    api_pod("r1-0", {DEPLOYMENT_LABEL: "r1", "dspool.io/replica": "0"}, 8, {ASCEND_DEVICE_ANNOTATION: '{"ids": [0]}'}),
    api_pod("train-7", {"app": "train"}, 4),
    api_pod("web", {"app": "web"}, 0) | {"spec": {"nodeName": "h100-0", "containers": [{"name": "nginx"}]}},
]


def test_listed_nodes_and_pods_give_the_views_a_whole_decode_gives() -> None:
    nodes = [api_node("h100-0"), api_node("h100-1")]
    decoded = decode.NODES.page(page("NodeList", nodes, "next"))
    assert decoded["metadata"] == {"resourceVersion": "99", "continue": "next"}  # the informer pages on
    assert [compact_node(n) for n in decoded["items"]] == [compact_node(n) for n in nodes]
    pods = decode.PODS.page(page("PodList", PODS, None))
    assert decoded["items"][0]["metadata"]["resourceVersion"] == "42"  # a watch resumes from it
    assert [compact_pod(p) for p in pods["items"]] == [compact_pod(p) for p in PODS]
    assert compact_pod(pods["items"][0])["metadata"]["annotations"] == {  # type: ignore[index]
        ASCEND_DEVICE_ANNOTATION: '{"ids": [0]}'
    }


def test_fields_nobody_reads_are_not_decoded() -> None:
    item = decode.PODS.page(page("PodList", PODS[:1], None))["items"][0]
    assert set(item["metadata"]) == {"name", "namespace", "uid", "resourceVersion", "labels", "annotations"}
    assert item["metadata"]["annotations"] == {ASCEND_DEVICE_ANNOTATION: '{"ids": [0]}'}  # no last-applied copy
    assert set(item["spec"]["containers"][0]) == {"name", "resources"}
    node = decode.NODES.item(json.dumps(api_node("n")))
    assert set(node["status"]) == {"allocatable", "capacity", "conditions"}  # no images, addresses, nodeInfo


def test_watch_events_keep_their_type_their_version_and_an_errors_status() -> None:
    modified = decode.NODES.event(json.dumps({"type": "MODIFIED", "object": api_node("h100-0")}))
    assert modified["type"] == "MODIFIED" and compact_node(modified["object"]) == compact_node(api_node("h100-0"))
    bookmark = decode.PODS.event(json.dumps({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {
        "resourceVersion": "120", "annotations": {"k8s.io/initial-events-end": "true"}}}}))  # fmt: skip
    assert bookmark["object"]["metadata"]["resourceVersion"] == "120"
    status = {"kind": "Status", "status": "Failure", "message": "too old", "reason": "Expired", "code": 410}
    gone = decode.PODS.event(json.dumps({"type": "ERROR", "object": status}))
    assert gone["object"]["code"] == 410  # the informer lists again


@pytest.mark.parametrize("odd", [{"spec": {"unschedulable": "yes"}}, {"metadata": {"name": "n", "labels": None}}])
def test_an_object_of_unexpected_shape_is_decoded_whole_instead_of_failing(odd: dict[str, Any]) -> None:
    node = api_node("n") | odd
    assert decode.NODES.page(page("NodeList", [node], None))["items"] == [node]
    assert decode.NODES.item(json.dumps(node)) == node


def test_other_kinds_decode_whole() -> None:
    body = {"apiVersion": "dspool.io/v1alpha1", "kind": "DeepSeekDeployment", "spec": {"model": "m", "replicas": 2}}
    assert decode.for_informer("deepseekdeployments").page(page("List", [body], None))["items"] == [body]
    assert decode.loads(json.dumps(body).encode()) == body


def test_the_annotation_the_schema_spells_out_is_the_one_mindie_reads() -> None:
    assert decode._PodAnnotations.__annotations__.keys() == {ASCEND_DEVICE_ANNOTATION}
