"""Decoding the API server's JSON for the watches: nodes and pods decoded to the fields dspool reads only.

A listed pod is 4-8 KB of JSON (managed fields, the containers' env, probes, mounts, status) of which the
compact view (:func:`dspool.views.compact_pod`) keeps a few hundred bytes. :func:`json.loads` builds every
field as Python objects first; a typed msgspec decoder skips the fields that no schema below names without
building them, which is most of a page's decoding time and its transient memory. The result is plain
dicts and lists, shaped as the API's JSON (missing keys where the object has none), so the compaction
functions read it exactly as they read ``json.loads``' output.

Kinds without a schema here (DSDs, PDBs, Deployments, events, Jobs) decode whole with :func:`loads`.
An object whose fields do not have the types the schema expects (an API server of another version, a
field that is null) is decoded whole instead: a watch never stops on a schema's mistake.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec

# ----------------------------------------------------------------------------------------- the schemas
# total=False: a key is present only when the JSON has it, as with json.loads. Values whose type the
# readers do not depend on are Any (taints, quantities), so that an unusual value never fails a page.


_ListMeta = TypedDict("_ListMeta", {"resourceVersion": str, "continue": str}, total=False)  # "continue": a keyword

# Only the NPUs the device plugin gave the pod (MindIE's rank tables: ASCEND_DEVICE_ANNOTATION, spelled out
# for the type checker; a test keeps them equal); other annotations (last-applied configurations) are skipped.
_PodAnnotations = TypedDict(
    "_PodAnnotations", {"ascend.kubectl.kubernetes.io/ascend-910-configuration": str}, total=False
)


class _NodeMeta(TypedDict, total=False):
    name: str
    uid: str
    resourceVersion: str
    labels: dict[str, str]


class _NodeCondition(TypedDict, total=False):
    type: str
    status: str
    lastTransitionTime: str | None


class _NodeSpec(TypedDict, total=False):
    unschedulable: bool
    taints: list[dict[str, Any]]


class _NodeStatus(TypedDict, total=False):
    allocatable: dict[str, Any]
    capacity: dict[str, Any]
    conditions: list[_NodeCondition]


class Node(TypedDict, total=False):
    """The fields of a v1.Node that :func:`dspool.views.compact_node` and the node selector read."""

    metadata: _NodeMeta
    spec: _NodeSpec
    status: _NodeStatus


class _PodMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    labels: dict[str, str]
    annotations: _PodAnnotations
    deletionTimestamp: str | None


class _Resources(TypedDict, total=False):
    limits: dict[str, Any]
    requests: dict[str, Any]


class _Container(TypedDict, total=False):
    name: str
    resources: _Resources
    restartPolicy: str  # marks sidecar init containers


class _PodSpec(TypedDict, total=False):
    nodeName: str | None
    containers: list[_Container]
    initContainers: list[_Container]


class _PodCondition(TypedDict, total=False):
    type: str
    status: str
    message: str  # why a pod is unschedulable (dspool.reconcile)
    lastTransitionTime: str | None


class _PodStatus(TypedDict, total=False):
    phase: str
    conditions: list[_PodCondition]
    podIP: str
    hostIP: str


class Pod(TypedDict, total=False):
    """The fields of a v1.Pod that :func:`dspool.views.compact_pod` reads."""

    metadata: _PodMeta
    spec: _PodSpec
    status: _PodStatus


class _NodePage(TypedDict, total=False):
    metadata: _ListMeta
    items: list[Node]


class _PodPage(TypedDict, total=False):
    metadata: _ListMeta
    items: list[Pod]


class _Event(TypedDict, total=False):
    type: str
    object: msgspec.Raw  # decoded by kind once the type is known: an ERROR carries a Status, not the kind


# ----------------------------------------------------------------------------------------- decoding

_ANY = msgspec.json.Decoder()


def loads(data: bytes | str) -> Any:
    """Any JSON document, whole, as plain Python objects (as :func:`json.loads`, faster)."""
    return _ANY.decode(data)


class KindDecoder:
    """Decodes one kind's list pages and watch events to the fields its schema names (``None``: whole)."""

    def __init__(self, item: type | None, page: type | None) -> None:
        self._item: msgspec.json.Decoder[Any] | None = msgspec.json.Decoder(item) if item is not None else None
        self._page: msgspec.json.Decoder[Any] | None = msgspec.json.Decoder(page) if page is not None else None
        self._event = msgspec.json.Decoder(_Event)

    def page(self, data: bytes | str) -> dict[str, Any]:
        """One page of a list: ``{"metadata": {"resourceVersion", "continue"}, "items": [...]}``."""
        if self._page is not None:
            try:
                decoded: dict[str, Any] = self._page.decode(data)
                return decoded
            except msgspec.ValidationError:
                pass  # some object has an unexpected type: take the page whole
        whole: dict[str, Any] = _ANY.decode(data)
        return whole

    def event(self, data: bytes | str) -> dict[str, Any]:
        """One watch event: ``{"type": ..., "object": ...}``; an ERROR's Status is decoded whole."""
        event = self._event.decode(data)
        raw = event.get("object")
        kind = event.get("type", "")
        return {"type": kind, "object": self.item(raw) if raw is not None and kind != "ERROR" else loads(raw or b"{}")}

    def item(self, data: bytes | str | msgspec.Raw) -> dict[str, Any]:
        """One object of the kind."""
        if self._item is not None:
            try:
                decoded: dict[str, Any] = self._item.decode(data)
                return decoded
            except msgspec.ValidationError:
                pass
        whole: dict[str, Any] = _ANY.decode(data)
        return whole


NODES = KindDecoder(Node, _NodePage)
PODS = KindDecoder(Pod, _PodPage)
WHOLE = KindDecoder(None, None)


def for_informer(name: str) -> KindDecoder:
    """The decoder for an informer by its name (``nodes``, ``pods``; any other kind decodes whole)."""
    return {"nodes": NODES, "pods": PODS}.get(name, WHOLE)
