"""Compact views of Nodes and Pods, the ``--node-selector`` text and node presence: pure functions of API dicts.

What the watches keep of each object is what accounting needs (5,000 nodes stay small, and heartbeats do
not change a node's view); the operator's watches (``dspool.kube.informer``) and the CLI's one-shot reader
(``dspool.kube.clusterview``) both use them, so ``dspool pool`` does not load the kopf layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dspool import api
from dspool.inventory import pod_device_requests
from dspool.workloads.mindie import ASCEND_DEVICE_ANNOTATION


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (equality only; ``k`` alone means the label exists) as a dict ('' = exists); match it
    with ``selectors.selector_selects(selectors.equality_selector(parsed), labels)``."""
    selector: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if not key:
            raise ValueError(f"bad label selector part {part!r}")
        selector[key.strip()] = value.strip()
    return selector


def compact_node(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node that inventory needs (keeps 5,000 nodes small; heartbeats do not change it)."""
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    return {
        "metadata": {
            "name": metadata.get("name"),
            "uid": metadata.get("uid"),  # a node replaced under the same name has another: its model cache is new
            "labels": dict(metadata.get("labels") or {}),
        },
        "spec": {"unschedulable": spec.get("unschedulable", False), "taints": list(spec.get("taints") or [])},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "capacity": dict(status.get("capacity") or {}),
            "conditions": [
                {"type": c.get("type"), "status": c.get("status"), "lastTransitionTime": c.get("lastTransitionTime")}
                for c in status.get("conditions") or []
                if c.get("type") == "Ready"
            ],
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
        kept = ("name", "resources", "restartPolicy")  # restartPolicy marks sidecar init containers
        return [{k: c[k] for k in kept if k in c} for c in spec.get(key) or []]

    annotations = metadata.get("annotations") or {}
    kept_annotations = {k: annotations[k] for k in (ASCEND_DEVICE_ANNOTATION,) if k in annotations}
    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "labels": labels,
            "annotations": kept_annotations,  # the NPUs the device plugin gave the pod: MindIE rank tables
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": containers("containers"),
            "initContainers": containers("initContainers"),
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": list(status.get("conditions") or []),
            "podIP": status.get("podIP"),
            "hostIP": status.get("hostIP"),
        },
    }


def present_nodes(nodes: Sequence[Mapping[str, Any]], now: datetime, grace_seconds: float) -> set[str]:
    """Nodes whose replicas keep their place: existing, and Ready or NotReady for less than the grace
    period (a kubelet restart, a network blip). Cordoned nodes are included: cordoning stops new
    placements, it does not evict."""
    present = set()
    for node in nodes:
        ready = next((c for c in node["status"]["conditions"] if c.get("type") == "Ready"), None)
        if ready is not None and ready.get("status") != "True":
            since = ready.get("lastTransitionTime")
            try:
                started = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
            except ValueError:
                continue
            if (now - started).total_seconds() > grace_seconds:
                continue
        present.add(node["metadata"]["name"])
    return present


def compact_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a DSD a pass reads: identity, spec and status (its reservations count whoever manages it)."""
    metadata = body.get("metadata", {})
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            key: metadata.get(key)
            for key in ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def compact_pdb(body: Mapping[str, Any]) -> dict[str, Any]:
    """A PodDisruptionBudget as rebalancing reads it: a replica whose pods one selects moves only when it
    allows a disruption."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    return {
        "namespace": body.get("metadata", {}).get("namespace"),
        "selector": dict(spec.get("selector") or {}),
        "disruptionsAllowed": status.get("disruptionsAllowed", 0),
    }


def compact_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a model-cache Job its record needs: which entry on which node, and how it ended."""
    metadata, status = body.get("metadata", {}), body.get("status", {})
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k.startswith("dspool.io/")}
    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "labels": dict(metadata.get("labels") or {}),
            "annotations": annotations,
        },
        "status": {
            "succeeded": status.get("succeeded"),
            "active": status.get("active"),
            "startTime": status.get("startTime"),
            "completionTime": status.get("completionTime"),
            "conditions": [
                {
                    "type": c.get("type"),
                    "status": c.get("status"),
                    "message": c.get("message"),
                    "reason": c.get("reason"),
                }
                for c in status.get("conditions") or []
            ],
        },
    }
