"""The node model cache in the cluster: fetch Jobs as its record, and what to fetch or evict next.

**Why Jobs are the record.** Each (entry, node) gets one fetch Job, pinned to the node. The Job does the work,
and its status is the Kubernetes-native record of the outcome: a succeeded Job is a Ready entry, a running one
is Fetching, a failed one is Failed with its condition's message. Nothing else has to be installed or kept
consistent (no second resource to write after the Job), a person reads the cache with
``kubectl get jobs -l dspool.io/component=model-fetch -A`` (or ``dspool cache``), and a restarted operator
finds every fetch where it left it: it never creates a second Job for an entry a Job already fetches. Jobs are
not owned by a DSD (two DSDs may share an entry; deleting one must not forget the cache); a Job lives in the
namespace of the DSD that first wanted it, so it can read that DSD's credentials Secret.

**Missing.** A record names the node's UID: a node replaced under the same name (an empty disk) has another
UID, so its records are stale, the entry is Missing and is fetched again before any pod relies on it.

**Eviction.** When a node's cache would exceed its capacity, the least recently used Ready entries that no
placed replica and no move uses are removed by an evict Job on that node; an entry in use is never removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dspool.api import MANAGED_BY_LABEL
from dspool.weights.entries import CacheEntry
from dspool.weights.state import (
    DEFAULT_MODEL_CACHE_DIR,
    ENTRY_MARKER,
    CacheView,
    EntryState,
    NodeEntry,
    NodeModelCache,
)

COMPONENT_LABEL = "dspool.io/component"
FETCH_COMPONENT = "model-fetch"
EVICT_COMPONENT = "model-evict"
ENTRY_LABEL = "dspool.io/model-cache-entry"
NODE_HASH_LABEL = "dspool.io/node-hash"  # node names may exceed a label value's 63 characters
NODE_ANNOTATION = "dspool.io/node"
NODE_UID_ANNOTATION = "dspool.io/node-uid"
BYTES_ANNOTATION = "dspool.io/entry-bytes"
SOURCE_ANNOTATION = "dspool.io/source"
LAST_USED_ANNOTATION = "dspool.io/last-used"
NODE_NAME_FIELD = "metadata.name"
DEVICE_TAINT_KEYS = ("nvidia.com/gpu", "huawei.com/Ascend910", "huawei.com/Ascend310P")
CACHE_VOLUME = "model-cache"
# The cache directory is a root-owned hostPath: the Jobs write it as root, with no capability and no escalation
# (the operator image's own user cannot). Engine pods only read it.
WRITER_SECURITY = {
    "runAsUser": 0,
    "runAsNonRoot": False,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
TOUCH_SECONDS = 3600.0  # an entry in use has its last-used time refreshed at most this often (one write an hour)
FETCH_BACKOFF_LIMIT = 6  # container restarts resume the fetch; a Job that fails this often records Failed


@dataclass(frozen=True)
class FetchSettings:
    """How fetch Jobs run (from the operator's settings)."""

    image: str
    cache_dir: str = DEFAULT_MODEL_CACHE_DIR
    hf_endpoint: str = ""
    max_per_node: int = 1
    max_in_flight: int = 4  # pool-wide: the origin's bandwidth is shared
    parallel_files: int = 4


@dataclass(frozen=True)
class WantedEntry:
    """An entry a placed replica (or a move's new copy) needs on one node."""

    entry: CacheEntry
    node: str
    namespace: str  # of the DSD that wants it (the Job goes there, beside its credentials)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    credentials_secret: str | None = None


@dataclass
class CachePlan:
    """What the pass writes for the cache: Jobs to create, Jobs to delete, and why some entries wait."""

    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    touch: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name): records of entries in use
    waiting: dict[tuple[str, str], str] = field(default_factory=dict)  # (entry, node) -> why not fetched yet


def node_hash(node: str) -> str:
    """A short, stable, label-safe stand-in for a node name."""
    return hashlib.sha256(node.encode()).hexdigest()[:10]


def job_name(component: str, entry: str, node: str) -> str:
    """``dspool-fetch-<entry>-<node hash>`` (or ``dspool-evict-...``), at most 63 characters."""
    verb = "fetch" if component == FETCH_COMPONENT else "evict"
    return f"dspool-{verb}-{entry[:38]}-{node_hash(node)}"


def entry_marker_path(cache_dir: str, entry: str) -> str:
    """The marker a complete entry holds (what an engine pod waits for)."""
    return f"{cache_dir.rstrip('/')}/{entry}/{ENTRY_MARKER}"


# ------------------------------------------------------------------------------------------- the Jobs


def _pinned_pod(node: str, tolerations: Iterable[Mapping[str, Any]], cache_dir: str) -> dict[str, Any]:
    """Pod spec parts every cache Job shares: pinned to the node, tolerating its taints, the cache mounted."""
    device = [{"key": key, "operator": "Exists", "effect": "NoSchedule"} for key in DEVICE_TAINT_KEYS]
    term = {"matchFields": [{"key": NODE_NAME_FIELD, "operator": "In", "values": [node]}]}
    return {
        "restartPolicy": "OnFailure",  # a restarted container resumes the fetch where it stopped
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}},
        "tolerations": [*device, *(dict(t) for t in tolerations)],
        "volumes": [{"name": CACHE_VOLUME, "hostPath": {"path": cache_dir, "type": "DirectoryOrCreate"}}],
    }


def _job(component: str, entry: CacheEntry, node: str, node_uid: str, namespace: str) -> dict[str, Any]:
    labels = {
        MANAGED_BY_LABEL: "dspool",
        COMPONENT_LABEL: component,
        ENTRY_LABEL: entry.id,
        NODE_HASH_LABEL: node_hash(node),
    }
    annotations = {
        NODE_ANNOTATION: node,
        NODE_UID_ANNOTATION: node_uid,
        BYTES_ANNOTATION: str(entry.size_bytes),
        SOURCE_ANNOTATION: f"{entry.source}@{entry.revision}",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(component, entry.id, node),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"backoffLimit": FETCH_BACKOFF_LIMIT, "template": {"metadata": {"labels": labels}}},
    }


def fetch_job(wanted: WantedEntry, node_uid: str, settings: FetchSettings) -> dict[str, Any]:
    """The Job that fetches ``wanted.entry`` into the node's cache (``python -m dspool.weights.fetch``).

    It requests the ephemeral storage it writes, so the scheduler accounts the disk; credentials come from
    the Secret the spec names (``envFrom``), never as plain values."""
    entry = wanted.entry
    job = _job(FETCH_COMPONENT, entry, wanted.node, node_uid, wanted.namespace)
    command = [
        "python", "-m", "dspool.weights.fetch",
        "--source", entry.source, "--revision", entry.revision, "--cache-dir", settings.cache_dir,
        "--entry", entry.id, "--expected-bytes", str(entry.size_bytes), "--parallel", str(settings.parallel_files),
    ]  # fmt: skip
    container: dict[str, Any] = {
        "name": "fetch",
        "image": settings.image,
        "command": command,
        "env": [{"name": "HF_ENDPOINT", "value": settings.hf_endpoint}] if settings.hf_endpoint else [],
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": settings.cache_dir}],
        "securityContext": WRITER_SECURITY,
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": f"{max(1, round(entry.size_gib))}Gi"},
            "limits": {"memory": "2Gi"},
        },
    }
    if wanted.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": wanted.credentials_secret}}]
    pod = _pinned_pod(wanted.node, wanted.tolerations, settings.cache_dir)
    job["spec"]["template"]["spec"] = {**pod, "containers": [container]}
    return job


def evict_job(entry: CacheEntry, node: str, node_uid: str, namespace: str, settings: FetchSettings) -> dict[str, Any]:
    """The Job that removes an entry from the node's cache (marker first, so nothing trusts a half-removed one)."""
    job = _job(EVICT_COMPONENT, entry, node, node_uid, namespace)
    path = f"{settings.cache_dir.rstrip('/')}/{entry.id}"
    script = f'rm -f "{path}/{ENTRY_MARKER}" && rm -rf "{path}"'
    container = {
        "name": "evict",
        "image": settings.image,
        "command": ["/bin/sh", "-c", script],
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": settings.cache_dir}],
        "securityContext": WRITER_SECURITY,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    job["spec"]["template"]["spec"] = {**_pinned_pod(node, (), settings.cache_dir), "containers": [container]}
    return job


# ------------------------------------------------------------------------------------- the record


def _job_state(job: Mapping[str, Any]) -> tuple[EntryState, str]:
    status = job.get("status") or {}
    if status.get("succeeded"):
        return EntryState.READY, ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return EntryState.FAILED, str(condition.get("message") or condition.get("reason") or "fetch failed")
    return EntryState.FETCHING, ""


def _last_used(annotations: Mapping[str, str]) -> datetime | None:
    return _timestamp(annotations.get(LAST_USED_ANNOTATION))


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


_PRECEDENCE = {EntryState.READY: 0, EntryState.FETCHING: 1, EntryState.FAILED: 2, EntryState.MISSING: 3}


def cache_view(
    jobs: Iterable[Mapping[str, Any]], node_uids: Mapping[str, str], capacities: Mapping[str, int]
) -> CacheView:
    """Every node's cache from the fetch and evict Jobs (``node_uids``: the nodes there now, name -> UID).

    An entry being evicted, or recorded on a node that was replaced since (another UID), is Missing; records
    of nodes that are gone are left out."""
    view = CacheView()
    evicting: set[tuple[str, str]] = set()
    for job in jobs:
        metadata = job.get("metadata") or {}
        labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
        node, entry = str(annotations.get(NODE_ANNOTATION, "")), str(labels.get(ENTRY_LABEL, ""))
        if node not in node_uids or not entry:
            continue
        if labels.get(COMPONENT_LABEL) == EVICT_COMPONENT:
            evicting.add((entry, node))
            continue
        state, reason = _job_state(job)
        if annotations.get(NODE_UID_ANNOTATION) != node_uids[node]:
            state, reason = EntryState.MISSING, "the node was replaced since the entry was fetched"
        record = NodeEntry(
            entry=entry,
            state=state,
            size_bytes=int(annotations.get(BYTES_ANNOTATION) or 0),
            reason=reason,
            last_used=_last_used(annotations),
            started_at=_timestamp((job.get("status") or {}).get("startTime")),
            finished_at=_timestamp((job.get("status") or {}).get("completionTime")),
        )
        cache = view.nodes.setdefault(node, NodeModelCache(node=node, capacity_bytes=capacities.get(node, 0)))
        known = cache.entries.get(entry)
        if known is None or _PRECEDENCE[state] < _PRECEDENCE[known.state]:
            cache.entries[entry] = record
    for entry, node in evicting:
        if node in view.nodes and entry in view.nodes[node].entries:
            found = view.nodes[node].entries[entry]
            view.nodes[node].entries[entry] = found.model_copy(
                update={"state": EntryState.MISSING, "reason": "being evicted"}
            )
    return view


def records_of(jobs: Iterable[Mapping[str, Any]], entry: str, node: str) -> list[tuple[str, str]]:
    """(namespace, name) of every Job about ``entry`` on ``node``."""
    found = []
    for job in jobs:
        metadata = job.get("metadata") or {}
        if (metadata.get("labels") or {}).get(ENTRY_LABEL) == entry and (
            (metadata.get("annotations") or {}).get(NODE_ANNOTATION) == node
        ):
            found.append((str(metadata.get("namespace")), str(metadata.get("name"))))
    return found


# ------------------------------------------------------------------------------------------- planning


def _finished_evictions(jobs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Once an evict Job succeeded, it and the entry's fetch records go: the node no longer has the entry."""
    done: list[tuple[str, str]] = []
    for job in jobs:
        metadata = job.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if labels.get(COMPONENT_LABEL) == EVICT_COMPONENT and (job.get("status") or {}).get("succeeded"):
            node = (metadata.get("annotations") or {}).get(NODE_ANNOTATION, "")
            done.extend(records_of(jobs, str(labels.get(ENTRY_LABEL)), node))
    return done


@dataclass
class _Planner:
    """One pass's cache planning: the inputs, the fetches counted so far, and the plan being written."""

    view: CacheView
    jobs: Sequence[Mapping[str, Any]]
    node_uids: Mapping[str, str]
    capacities: Mapping[str, int]
    known_entries: Mapping[str, CacheEntry]
    settings: FetchSettings
    now: datetime | None
    in_use: dict[str, set[str]]
    plan: CachePlan = field(default_factory=CachePlan)
    per_node: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0

    def __post_init__(self) -> None:
        for cache in self.view.nodes.values():
            fetching = sum(1 for e in cache.entries.values() if e.state == EntryState.FETCHING)
            if fetching:
                self.per_node[cache.node] = fetching
                self.in_flight += fetching

    def step(self, item: WantedEntry) -> None:
        """What ``item`` needs this pass: nothing (Ready, Fetching), a stamp, a fetch, evictions, or to wait."""
        node, entry = item.node, item.entry
        cache = self.view.nodes.get(node) or NodeModelCache(node=node, capacity_bytes=self.capacities.get(node, 0))
        record = cache.entries.get(entry.id)
        if record is not None and record.state == EntryState.READY:
            self._touch_if_stale(record, entry.id, node)
            return
        if record is not None and record.state == EntryState.FETCHING:
            return
        key, settings = (entry.id, node), self.settings
        if record is not None and record.reason == "being evicted":
            self.plan.waiting[key] = "waiting for its eviction to finish before fetching it again"
        elif self.in_flight >= settings.max_in_flight or self.per_node.get(node, 0) >= settings.max_per_node:
            self.plan.waiting[key] = (
                f"queued: {self.in_flight} fetches in flight (at most {settings.max_in_flight} at once, "
                f"{settings.max_per_node} per node)"
            )
        elif record is not None:  # Failed or Missing: its old record goes first (the new Job takes its name)
            self.plan.delete.extend(records_of(self.jobs, entry.id, node))
            self.plan.waiting[key] = f"fetching again once the old record goes ({record.state.value.lower()})"
        else:
            self._fetch_or_evict(item, cache)

    def _touch_if_stale(self, record: NodeEntry, entry: str, node: str) -> None:
        if record.last_used is None or (
            self.now is not None and (self.now - record.last_used).total_seconds() > TOUCH_SECONDS
        ):
            self.plan.touch.extend(records_of(self.jobs, entry, node))

    def _fetch_or_evict(self, item: WantedEntry, cache: NodeModelCache) -> None:
        node, entry, key = item.node, item.entry, (item.entry.id, item.node)
        unknown = {e for e in cache.entries if e not in self.known_entries}  # no description: no evict Job
        evict = cache.evictions_for(entry.size_bytes, self.in_use.get(node, set()) | unknown)
        if evict is None:
            self.plan.waiting[key] = (
                f"{node}'s model cache ({cache.capacity_bytes / 1024**3:.0f} GiB) cannot hold "
                f"{entry.size_gib:.0f} GiB besides the entries in use"
            )
            return
        for victim in evict:
            self.plan.create.append(
                evict_job(self.known_entries[victim], node, self.node_uids[node], item.namespace, self.settings)
            )
        if evict:
            self.plan.waiting[key] = f"evicting {', '.join(evict)} first"
            return
        self.plan.create.append(fetch_job(item, self.node_uids[node], self.settings))
        self.in_flight += 1
        self.per_node[node] = self.per_node.get(node, 0) + 1


def plan_cache(
    wanted: Sequence[WantedEntry],
    view: CacheView,
    jobs: Sequence[Mapping[str, Any]],
    node_uids: Mapping[str, str],
    capacities: Mapping[str, int],
    known_entries: Mapping[str, CacheEntry],
    settings: FetchSettings,
    now: datetime | None = None,
    prefetch: Sequence[WantedEntry] = (),
) -> CachePlan:
    """The Jobs to create and delete so that every wanted entry gets onto its node, within the bounds
    (``max_per_node`` and ``max_in_flight`` fetches at once), evicting what no replica uses when a cache is full.

    ``wanted`` is in priority order (the oldest DSD first); ``capacities``: each node's cache size in bytes;
    ``known_entries``: every entry a DSD describes (by id), which eviction needs. Failed and Missing records
    are deleted and fetched again. Ready records in use whose last-used time is older than ``TOUCH_SECONDS``
    (or unset) are listed in ``touch``: the caller stamps them with ``now`` (what eviction's LRU order reads).
    ``prefetch``: entries to keep warm on more nodes (``spec.weights.warmNodes``), fetched after every wanted
    one and never counted as in use (eviction may take them back)."""
    in_use: dict[str, set[str]] = {}
    for item in wanted:
        in_use.setdefault(item.node, set()).add(item.entry.id)
    planner = _Planner(view, jobs, node_uids, capacities, known_entries, settings, now, in_use)
    planner.plan.delete = _finished_evictions(jobs)
    for item in [*wanted, *prefetch]:
        planner.step(item)
    return planner.plan
