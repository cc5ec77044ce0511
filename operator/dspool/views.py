"""Compact views of Nodes and Pods, the ``--node-selector`` text and node presence: pure functions of API dicts.

What the watches keep of each object is what accounting needs (5,000 nodes stay small, and heartbeats do
not change a node's view); label strings are interned and the parts thousands of objects repeat are shared
(docs/operator.md, "Start-up and memory"); the operator's watches (``dspool.kube.informer``) and the
CLI's one-shot reader (``dspool.kube.clusterview``) both use them, so ``dspool pool`` does not load kopf.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from sys import intern
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


# Views are read, never changed, by every reader (the pass copies what it changes), so identical parts
# are one object shared by every view that has them: thousands of nodes carry the same label strings,
# taints, allocatable resources and conditions, and pods of other workloads the same device requests.
_EMPTY_DICT: dict[str, Any] = {}
_EMPTY_LIST: list[Any] = []
_SHARED_LIMIT = 32768  # distinct shared parts kept for reuse (cleared past it: sharing is only a saving)
_INTERN_LONGEST = 256  # longer strings (messages, JSON in annotations) are rarely repeated
# Filled from every watch's thread: a race builds a part twice or clears it early, both harmless.
_shared: dict[Any, Any] = {}


def _share(key: Any, build: Callable[[], Any]) -> Any:
    """The one object built for ``key``; views that would hold equal parts hold this one."""
    found = _shared.get(key)
    if found is None:
        if len(_shared) >= _SHARED_LIMIT:
            _shared.clear()
        found = _shared[key] = build()
    return found


def _text(value: Any) -> Any:
    """One copy of a short string that many objects repeat (label keys and values, node names, phases)."""
    return intern(value) if type(value) is str and len(value) <= _INTERN_LONGEST else value


def _string_map(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a labels-like mapping with interned keys and values (empty: the shared empty dict)."""
    if not mapping:
        return _EMPTY_DICT
    return {_text(key): _text(value) for key, value in mapping.items()}


def _shared_map(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """A mapping that many objects repeat whole (allocatable, capacity), one copy per distinct content."""
    if not mapping:
        return _EMPTY_DICT
    items = tuple(mapping.items())
    try:
        return _share(("map", items), lambda: _string_map(mapping))  # type: ignore[no-any-return]
    except TypeError:  # an unhashable value: not shared
        return _string_map(mapping)


def _shared_list(kind: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A list of small flat dicts (taints, conditions) many objects repeat, one copy per distinct content."""
    if not items:
        return _EMPTY_LIST
    try:
        key = (kind, tuple(tuple(item.items()) for item in items))
        return _share(key, lambda: [_string_map(item) for item in items])  # type: ignore[no-any-return]
    except (TypeError, AttributeError):  # a nested or unhashable value: not shared
        return list(items)


def compact_node(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node that inventory needs (keeps 5,000 nodes small; heartbeats do not change it)."""
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    ready = [
        {"type": c.get("type"), "status": c.get("status"), "lastTransitionTime": c.get("lastTransitionTime")}
        for c in status.get("conditions") or []
        if c.get("type") == "Ready"
    ]
    return {
        "metadata": {
            "name": _text(metadata.get("name")),
            "uid": metadata.get("uid"),  # a node replaced under the same name has another: its model cache is new
            "labels": _string_map(metadata.get("labels")),
        },
        "spec": {
            "unschedulable": spec.get("unschedulable", False),
            "taints": _shared_list("taints", list(spec.get("taints") or [])),
        },
        "status": {
            "allocatable": _shared_map(status.get("allocatable")),
            "capacity": _shared_map(status.get("capacity")),
            "conditions": _shared_list("conditions", ready),
        },
    }


def compact_pod(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parts of a Pod that accounting and readiness need, or None for pods that hold no devices.

    dspool's pods keep what readiness, replacement and MindIE's rank tables read; another workload's pod
    keeps only what accounting reads (node, phase, deletion, its device requests as one container).
    """
    metadata = body.get("metadata", {})
    labels = metadata.get("labels") or {}
    devices = pod_device_requests(body)
    if api.DEPLOYMENT_LABEL not in labels:
        return _foreign_pod(body, devices) if devices else None
    spec, status = body.get("spec", {}), body.get("status", {})
    annotations = metadata.get("annotations") or {}
    kept_annotations = {k: annotations[k] for k in (ASCEND_DEVICE_ANNOTATION,) if k in annotations}
    conditions = [
        {key: c[key] for key in ("type", "status", "message", "lastTransitionTime") if key in c}
        for c in status.get("conditions") or []
    ]
    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": _text(metadata.get("namespace")),
            "labels": _string_map(labels),
            "annotations": kept_annotations or _EMPTY_DICT,  # the NPUs the device plugin gave the pod: rank tables
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "spec": {
            "nodeName": _text(spec.get("nodeName")),
            "containers": _containers(spec.get("containers")),
            "initContainers": _containers(spec.get("initContainers")),
        },
        "status": {
            "phase": _text(status.get("phase")),
            "conditions": conditions,
            "podIP": status.get("podIP"),
            "hostIP": status.get("hostIP"),
        },
    }


def _containers(containers: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    kept = ("name", "resources", "restartPolicy")  # restartPolicy marks sidecar init containers
    return [{k: c[k] for k in kept if k in c} for c in containers or []] or _EMPTY_LIST


def _foreign_pod(body: Mapping[str, Any], devices: dict[str, int]) -> dict[str, Any]:
    """Another workload's pod as accounting reads it: where it runs, whether it still does, what it holds.

    Its containers become one that requests what the pod holds (``pod_device_requests`` of the view is
    that of the pod); the spec and status are shared by the pods that have the same ones.
    """
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    node, phase = _text(spec.get("nodeName")), _text(status.get("phase"))
    held = tuple(sorted(devices.items()))
    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": _text(metadata.get("namespace")),
            "labels": _EMPTY_DICT,  # read for dspool's labels only
            "annotations": _EMPTY_DICT,
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "spec": _share(("pod-spec", node, held), lambda: {
            "nodeName": node,
            "containers": [{"name": "devices", "resources": {"requests": {_text(k): str(v) for k, v in held}}}],
            "initContainers": _EMPTY_LIST,
        }),
        "status": _share(("pod-status", phase), lambda: {
            "phase": phase, "conditions": _EMPTY_LIST, "podIP": None, "hostIP": None,
        }),
    }  # fmt: skip


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
