"""Reconcile one DeepSeekDeployment: a pure function from (object, pool, pods) to (status, objects, events).

The kopf layer (``dspool.controller``) feeds it what the watches hold and writes back what it returns;
nothing here talks to the API server, so every rule below is unit-tested without a cluster.

Rules, in order:
1. an invalid spec or an unknown model is phase Failed with the reason;
2. a replica whose node is gone, NotReady or cordoned, or whose pods stay unschedulable longer than
   ``stuck_after_seconds``, loses its reservation and is placed again;
3. more replicas than asked: remove those whose removal leaves the pool least fragmented;
4. fewer: place the missing ones (lowest free replica indexes), reserving as it goes;
5. replicas built from an older spec (spec hash) are replaced make-before-break when there is room:
   they keep serving until every up-to-date replica is Ready; when there is no room, one old replica is
   removed to make room for its successor (rolling in place).

Phases: Failed (bad spec or model), Unschedulable (no replica could be placed), Degraded (some replicas
placed, others not), Progressing (all placed, not all Ready), Ready (as many Ready as asked).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dspool.api import (
    REPLICA_LABEL,
    Condition,
    DeepSeekDeployment,
    DeepSeekDeploymentStatus,
    Phase,
    ReplicaPlacement,
)
from dspool.catalog import Catalog, UnknownIdError
from dspool.inventory import Pool
from dspool.placement import Decision, ReplicaRequest, place_replica, release, reserve, scale_down_victims
from dspool.workloads import ImageDefaults, build_replica_objects, build_service, endpoint_url, service_selector

DEFAULT_STUCK_AFTER_SECONDS = 120.0


@dataclass(frozen=True)
class ReconcileSettings:
    """Operator-wide knobs that shape reconciliation."""

    lws_available: bool = False
    images: ImageDefaults | None = None
    stuck_after_seconds: float = DEFAULT_STUCK_AFTER_SECONDS


@dataclass
class Event:
    """A Kubernetes event to post on the DeepSeekDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class ReconcileResult:
    """What the controller must write: the status, the objects that should exist, and events."""

    status: DeepSeekDeploymentStatus
    objects: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short hash of everything in the spec that shapes a replica (all but the replica count)."""
    relevant = {key: value for key, value in spec.items() if key != "replicas"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:10]


def deployment_key(namespace: str, name: str) -> str:
    """The ``namespace/name`` key reservations use."""
    return f"{namespace}/{name}"


def _failed(body: Mapping[str, Any], reason: str, message: str) -> ReconcileResult:
    old = _old_status(body)
    status = DeepSeekDeploymentStatus(
        phase=Phase.FAILED,
        replicas=0,
        ready_replicas=0,
        placements=old.placements if old else [],
        message=message,
        observed_generation=body.get("metadata", {}).get("generation"),
        conditions=[Condition(type="Ready", status="False", reason=reason, message=message)],
    )
    return ReconcileResult(status=status, events=[Event("Warning", reason, message)])


def _old_status(body: Mapping[str, Any]) -> DeepSeekDeploymentStatus | None:
    try:
        return DeepSeekDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _pod_is_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# Scheduler messages that mean the planned node cannot take the pod (devices taken meanwhile, node
# relabelled or tainted); another placement may help. A missing volume or quota does not move with it.
_PLACEMENT_FAILURES = ("Insufficient", "node affinity", "untolerated taint", "node(s) were unschedulable")


def _unschedulable_since(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod became unschedulable on its planned node, or None."""
    if pod.get("status", {}).get("phase") != "Pending":
        return None
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message") or ""
            if message and not any(marker in message for marker in _PLACEMENT_FAILURES):
                return None
            return _parse_time(condition.get("lastTransitionTime"))
    return None


def _pods_by_replica(pods: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for pod in pods:
        value = pod.get("metadata", {}).get("labels", {}).get(REPLICA_LABEL)
        if value is not None and str(value).isdigit():
            grouped.setdefault(int(value), []).append(pod)
    return grouped


def _replica_ready(placement: ReplicaPlacement, pods: Sequence[Mapping[str, Any]]) -> bool:
    ready_nodes = {pod.get("spec", {}).get("nodeName") for pod in pods if _pod_is_ready(pod)}
    return all(node.name in ready_nodes for node in placement.nodes)


def _safe_release(pool: Pool, deployment: str, placement: ReplicaPlacement) -> None:
    """Release what is still in the pool; nodes that left it need no release."""
    present = [node for node in placement.nodes if node.name in pool.nodes]
    if present:
        release(pool, deployment, placement.model_copy(update={"nodes": present}))


def reconcile(
    body: Mapping[str, Any],
    catalog: Catalog,
    pool: Pool,
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    settings: ReconcileSettings = ReconcileSettings(),
) -> ReconcileResult:
    """Decide the status and objects of one DSD. ``pool`` already holds this DSD's reservations."""
    try:
        dsd = DeepSeekDeployment.model_validate(dict(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _failed(body, "InvalidSpec", f"{where}: {first['msg']}")
    try:
        model = catalog.model(dsd.spec.model)
    except UnknownIdError as exc:
        return _failed(body, "UnknownModel", str(exc))

    key = deployment_key(dsd.namespace, dsd.name)
    current_hash = spec_hash(body.get("spec", {}))
    old = dsd.status or DeepSeekDeploymentStatus()
    placements: dict[int, ReplicaPlacement] = {p.replica: p for p in old.placements}
    pods_by_replica = _pods_by_replica(pods)
    events: list[Event] = []

    # 2. replicas that lost their node, or whose pods cannot be scheduled, give their reservation back.
    for index, placement in sorted(placements.items()):
        lost = [node.name for node in placement.nodes if node.name not in pool.nodes]
        stuck = [
            pod.get("spec", {}).get("nodeName") or pod.get("metadata", {}).get("name", "?")
            for pod in pods_by_replica.get(index, [])
            if (since := _unschedulable_since(pod)) is not None
            and (now - since).total_seconds() > settings.stuck_after_seconds
        ]
        if lost or stuck:
            _safe_release(pool, key, placement)
            del placements[index]
            why = (
                f"node(s) {', '.join(lost)} gone, NotReady or cordoned"
                if lost
                else (f"pods unschedulable for over {settings.stuck_after_seconds:.0f}s")
            )
            events.append(Event("Warning", "ReplicaLost", f"replica {index}: {why}; placing it again"))

    desired = dsd.spec.replicas
    current = {i: p for i, p in placements.items() if p.spec_hash == current_hash}
    outdated = {i: p for i, p in placements.items() if p.spec_hash != current_hash}

    # 3. scale down the up-to-date replicas first, choosing victims that leave the pool least fragmented.
    if len(current) > desired:
        victims = scale_down_victims(pool, list(current.values()), len(current) - desired)
        for index in victims:
            _safe_release(pool, key, current.pop(index))
            events.append(Event("Normal", "ScaledDown", f"removed replica {index}"))

    # 4. place the missing replicas.
    refusal: Decision | None = None
    missing = desired - len(current)
    while missing > 0:
        used = set(current) | set(outdated)
        index = next(i for i in range(len(used) + 1) if i not in used)
        request = ReplicaRequest.from_spec(dsd.namespace, dsd.name, index, dsd.spec, catalog)
        decision = place_replica(pool, request, catalog, list(current.values()))
        if decision.placement is None and outdated:
            # 5b. no room: give up one old replica (the highest index) for its successor.
            victim_index = max(outdated)
            _safe_release(pool, key, outdated.pop(victim_index))
            events.append(Event("Normal", "Replacing", f"replica {victim_index} removed to make room for the new spec"))
            continue
        if decision.placement is None:
            refusal = decision
            break
        placement = decision.placement.model_copy(update={"replica": index, "spec_hash": current_hash})
        reserve(pool, key, placement)
        current[index] = placement
        events.append(Event("Normal", "Placed", f"replica {index}: {decision.reason}"))
        missing -= 1

    ready = {i for i, p in {**outdated, **current}.items() if _replica_ready(p, pods_by_replica.get(i, []))}
    # 5a. make-before-break: old replicas go once every up-to-date replica serves.
    if outdated and all(i in ready for i in current) and len(current) >= desired:
        for index in sorted(outdated):
            _safe_release(pool, key, outdated.pop(index))
            ready.discard(index)
            events.append(Event("Normal", "Replaced", f"replica {index} (old spec) removed; new replicas are Ready"))

    final = sorted({**outdated, **current}.values(), key=lambda p: p.replica)
    ready_count = min(len(ready & {p.replica for p in final}), desired)
    phase, conditions, message = _summarize(dsd, len(current), ready_count, refusal, old.conditions, now)
    if refusal is not None:
        events.append(Event("Warning", "Unschedulable", refusal.reason))
    status = DeepSeekDeploymentStatus(
        phase=phase,
        replicas=len(final),
        ready_replicas=ready_count,
        selector=",".join(f"{k}={v}" for k, v in service_selector(dsd).items()),
        placements=final,
        endpoint=endpoint_url(dsd),
        conditions=conditions,
        observed_generation=dsd.metadata.get("generation"),
        message=message,
    )
    objects: list[dict[str, Any]] = []
    for placement in final:
        accelerator = catalog.accelerator(placement.accelerator)
        kwargs: dict[str, Any] = {"lws_available": settings.lws_available}
        if settings.images is not None:
            kwargs["images"] = settings.images
        objects.extend(build_replica_objects(dsd, placement, model, accelerator, **kwargs))
    objects.append(build_service(dsd))
    return ReconcileResult(status=status, objects=objects, events=events)


def _summarize(
    dsd: DeepSeekDeployment,
    placed: int,
    ready: int,
    refusal: Decision | None,
    old_conditions: Sequence[Condition],
    now: datetime,
) -> tuple[Phase, list[Condition], str]:
    desired = dsd.spec.replicas
    if refusal is not None and placed == 0:
        phase = Phase.UNSCHEDULABLE
    elif refusal is not None:
        phase = Phase.DEGRADED
    elif ready >= desired:
        phase = Phase.READY
    else:
        phase = Phase.PROGRESSING
    if refusal is not None:
        scheduled = Condition(type="Scheduled", status="False", reason="Unschedulable", message=refusal.reason)
        message = refusal.reason
    else:
        scheduled = Condition(
            type="Scheduled", status="True", reason="Placed", message=f"{placed} of {desired} replicas placed"
        )
        message = f"{ready} of {desired} replicas ready"
    ready_condition = Condition(
        type="Ready",
        status="True" if ready >= desired else "False",
        reason="ReplicasReady" if ready >= desired else "ReplicasNotReady",
        message=f"{ready} of {desired} replicas ready",
    )
    generation = dsd.metadata.get("generation")
    stamped = []
    previous = {c.type: c for c in old_conditions}
    for condition in (scheduled, ready_condition):
        before = previous.get(condition.type)
        unchanged = before is not None and before.status == condition.status and before.last_transition_time
        when = before.last_transition_time if unchanged and before else now.strftime("%Y-%m-%dT%H:%M:%SZ")
        stamped.append(condition.model_copy(update={"last_transition_time": when, "observed_generation": generation}))
    return phase, stamped, message
