"""Workloads the cluster refuses to run: what dspool reads about them, and what the DSD then says (pure).

dspool's objects can be accepted by the API server and still never get pods: the ReplicaSet or StatefulSet
controller's pod creation is refused by a ResourceQuota ("exceeded quota"), an admission webhook
("admission webhook ... denied the request"), a LimitRange ("maximum cpu usage per Container is ...") or Pod
Security admission ("violates PodSecurity"). The DSD would stay Progressing without a word. The cluster
records these refusals in two places, and dspool reads both (the watches are in :mod:`dspool.kube.runtime`):

- the Deployment's ``ReplicaFailure`` condition (status True, reason ``FailedCreate``), which the deployment
  controller copies from its ReplicaSet and clears once a pod is created again;
- ``FailedCreate`` Warning events on the ReplicaSet, StatefulSet (dspool's own, or those a LeaderWorkerSet
  made) or Job, from the controller that tried (no condition exists for StatefulSets).

:func:`refusals_by_deployment` maps them to the DSD owning the workload (by dspool's workload names: a
ReplicaSet or an LWS's StatefulSet is named after its owner plus a suffix); :func:`with_workload_refusals`
puts condition ``WorkloadRefused`` (status True, reason ``QuotaExceeded``, ``WebhookDenied``,
``AdmissionPolicyDenied``, ``LimitRangeViolated``, ``PodSecurityViolated`` or ``PodCreateFailed``; message: the
API server's words) on
the status. An event counts while it is recent (:data:`EVENT_FRESH_SECONDS`: the controllers retry with a
back-off and repeat the event while the refusal lasts) and while the DSD has fewer pods than its objects ask for
(:func:`pods_wanted`); a ReplicaSet's events are left to its Deployment's condition, which clears itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dspool.api import DEPLOYMENT_LABEL

REFUSED_CONDITION = "WorkloadRefused"
EVENT_FRESH_SECONDS = 600.0
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "LeaderWorkerSet", "Job")


@dataclass(frozen=True)
class WorkloadRefusal:
    """One of a DSD's workloads whose pods the cluster refuses, and why."""

    kind: str
    name: str
    reason: str
    message: str

    def describe(self) -> str:
        """One line: which workload, and the API server's reason."""
        return f"{self.kind} {self.name}: {self.message}"


def classify(message: str) -> str:
    """The condition reason for a refusal message (the API server's text)."""
    lowered = message.lower()
    if "exceeded quota" in lowered or ("must specify" in lowered and "quota" in lowered):
        return "QuotaExceeded"
    if "admission webhook" in lowered and "denied" in lowered:
        return "WebhookDenied"
    if "validatingadmissionpolicy" in lowered and "denied" in lowered:
        return "AdmissionPolicyDenied"
    if "violates podsecurity" in lowered:
        return "PodSecurityViolated"
    if "limitrange" in lowered or " per container is " in lowered or " per pod is " in lowered:
        return "LimitRangeViolated"
    return "PodCreateFailed"


def normalized(message: str) -> str:
    """The API server's refusal without what changes at every retry (the generated pod name, the event
    recorder's "(combined from similar events)", the controller's "Error creating:"), so a refusal that
    lasts reads the same each time: one condition, one event, no status write per retry."""
    text = re.sub(r"^\(combined from similar events\):\s*", "", message.strip())
    text = re.sub(r"^Error creating:\s*", "", text)
    return re.sub(r'^pods "[^"]*" is forbidden', "pods are forbidden", text)


def compact_workload(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a pass keeps of one of dspool's Deployments: its ``ReplicaFailure`` message (None: none)."""
    metadata = body.get("metadata") or {}
    label = (metadata.get("labels") or {}).get(DEPLOYMENT_LABEL)
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True" and label:
            message = normalized(str(condition.get("message") or ""))
            return {"namespace": metadata.get("namespace"), "name": metadata.get("name"), "label": label,
                    "kind": body.get("kind") or "Deployment", "message": message}  # fmt: skip
    return None


def compact_failed_create(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a pass keeps of a ``FailedCreate`` event on a workload (None: another kind of event)."""
    involved = body.get("involvedObject") or body.get("regarding") or {}
    if body.get("reason") != "FailedCreate" or involved.get("kind") not in WORKLOAD_KINDS:
        return None
    when = body.get("lastTimestamp") or body.get("eventTime") or (body.get("metadata") or {}).get("creationTimestamp")
    return {"namespace": involved.get("namespace") or (body.get("metadata") or {}).get("namespace"),
            "kind": involved.get("kind"), "name": involved.get("name"),
            "message": normalized(str(body.get("message") or "")),
            "at": when or ""}  # fmt: skip


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _owner(name: str, workload_names: Mapping[str, str]) -> str | None:
    """The DSD label of the longest dspool workload name that ``name`` is or starts with (``<name>-...``)."""
    best: tuple[int, str] | None = None
    for workload, label in workload_names.items():
        longer = best is None or len(workload) > best[0]
        if longer and (name == workload or name.startswith(workload + "-")):
            best = (len(workload), label)
    return best[1] if best else None


def refusals_by_deployment(
    failing_workloads: Iterable[Mapping[str, Any]],
    failed_creates: Iterable[Mapping[str, Any]],
    workload_names: Mapping[tuple[str, str], str],
    now: datetime,
) -> dict[tuple[str, str], list[WorkloadRefusal]]:
    """The refusals of each DSD, keyed by (namespace, DSD label value).

    ``failing_workloads``: :func:`compact_workload` views; ``failed_creates``: :func:`compact_failed_create`
    views; ``workload_names``: (namespace, workload name) -> DSD label of every object dspool made (from
    the ledger or from pod labels), to find the DSD of a ReplicaSet or an LWS's StatefulSet.
    """
    found: dict[tuple[str, str], dict[tuple[str, str], WorkloadRefusal]] = {}
    for view in failing_workloads:
        refusal = WorkloadRefusal(view["kind"], view["name"], classify(view["message"]), view["message"])
        found.setdefault((view["namespace"], view["label"]), {})[(refusal.kind, refusal.name)] = refusal
    by_namespace: dict[str, dict[str, str]] = {}
    for (namespace, name), label in workload_names.items():
        by_namespace.setdefault(namespace, {})[name] = label
    for event in sorted(failed_creates, key=lambda e: str(e.get("at") or "")):
        at = _parse_time(str(event.get("at") or ""))
        if at is None or (now - at).total_seconds() > EVENT_FRESH_SECONDS:
            continue
        owner = _owner(str(event["name"]), by_namespace.get(str(event["namespace"]), {}))
        if owner is None:
            continue
        if event["kind"] == "ReplicaSet":
            continue  # a ReplicaSet of one of dspool's Deployments: their ReplicaFailure condition says it, and clears
        refusal = WorkloadRefusal(event["kind"], event["name"], classify(event["message"]), event["message"])
        found.setdefault((event["namespace"], owner), {})[(refusal.kind, refusal.name)] = refusal  # the latest
    return {key: sorted(values.values(), key=lambda r: (r.kind, r.name)) for key, values in found.items()}


def pods_wanted(objects: Iterable[Mapping[str, Any]]) -> int:
    """How many pods a DSD's objects ask for (Deployments, StatefulSets, LeaderWorkerSets: groups x size)."""
    total = 0
    for obj in objects:
        spec = obj.get("spec") or {}
        replicas = int(spec.get("replicas", 1) or 0)
        if obj.get("kind") in ("Deployment", "StatefulSet"):
            total += replicas
        elif obj.get("kind") == "LeaderWorkerSet":
            total += replicas * int((spec.get("leaderWorkerTemplate") or {}).get("size", 1) or 1)
    return total


def with_workload_refusals(
    status: dict[str, Any], old: Mapping[str, Any], refusals: Sequence[WorkloadRefusal], now: datetime
) -> dict[str, Any]:
    """``status`` with condition ``WorkloadRefused`` (True) when the cluster refuses the DSD's pods; unchanged
    when nothing is refused (the condition then disappears with the next status)."""
    if not refusals:
        return status
    reasons = sorted({r.reason for r in refusals})
    reason = reasons[0] if len(reasons) == 1 else "Multiple"
    message = "; ".join(r.describe() for r in refusals)[:1024]
    before = next((c for c in old.get("conditions") or [] if c.get("type") == REFUSED_CONDITION), None)
    since = (before or {}).get("lastTransitionTime") or now.strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"type": REFUSED_CONDITION, "status": "True", "reason": reason, "message": message,
                 "lastTransitionTime": since}  # fmt: skip
    return {
        **status,
        "conditions": [*(c for c in status.get("conditions") or [] if c.get("type") != REFUSED_CONDITION), condition],
        "message": f"the cluster refuses its pods ({reason}): {message}"[:1024],
    }


def newly_refused(old: Mapping[str, Any], refusals: Sequence[WorkloadRefusal]) -> bool:
    """Whether these refusals are news against the stored status (then an event is posted once)."""
    if not refusals:
        return False
    before = next((c for c in old.get("conditions") or [] if c.get("type") == REFUSED_CONDITION), None)
    message = "; ".join(r.describe() for r in refusals)[:1024]
    return before is None or before.get("message") != message
