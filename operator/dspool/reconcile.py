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
   they keep serving until every up-to-date replica is Ready; when there is no room, one old replica per
   pass is removed to make room for its successor, only if that makes room and only once every
   up-to-date replica serves (rolling in place).

Phases: Failed (bad spec or model), Unschedulable (no replica could be placed), Degraded (some replicas
placed, others not), Progressing (all placed, not all Ready), Ready (as many Ready as asked).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dspool.api import (
    DEPLOYMENT_LABEL,
    PLACEMENT_LABEL,
    REPLICA_LABEL,
    ROLE_LABEL,
    Condition,
    DeepSeekDeployment,
    DeepSeekDeploymentSpec,
    DeepSeekDeploymentStatus,
    Phase,
    ReplicaPlacement,
    deployment_label_value,
    placement_fingerprint,
    placements_from_status,
)
from dspool.catalog import Catalog, UnknownIdError
from dspool.inventory import Pool
from dspool.moves import advance_moves, moves_from_status
from dspool.placement import (
    Decision,
    DemandMix,
    ReplicaRequest,
    place_replica,
    scale_down_victims,
)
from dspool.rebalance import RebalancePolicy
from dspool.workloads import ImageDefaults, build_replica_objects, build_service, endpoint_url, service_selector

DEFAULT_STUCK_AFTER_SECONDS = 120.0


@dataclass(frozen=True)
class ReconcileSettings:
    """Operator-wide knobs that shape reconciliation."""

    lws_available: bool = False
    images: ImageDefaults | None = None
    stuck_after_seconds: float = DEFAULT_STUCK_AFTER_SECONDS
    mindcluster: bool = False  # MindCluster's ascend-operator writes MindIE rank tables; dspool does not
    demand: DemandMix | None = None  # the models to keep room for (those of the DSDs in the cluster)
    rebalance_policy: RebalancePolicy = field(default_factory=RebalancePolicy)


@dataclass
class Event:
    """A Kubernetes event to post on the DeepSeekDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class ReconcileResult:
    """What the controller must write: the status, the objects that should exist, and events.

    ``hold``: leave the DSD's existing workloads alone (the spec is unusable; nothing is re-planned).
    """

    status: DeepSeekDeploymentStatus
    objects: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    hold: bool = False
    decision_seconds: list[float] = field(default_factory=list)
    desired: int | None = None  # the replicas run (spec.replicas within spec.scaling); None for a bad spec
    moves_finished: int = 0
    moves_rolled_back: int = 0
    devices_freed: int = 0  # by this DSD's finished moves


def spec_hash(spec: DeepSeekDeploymentSpec) -> str:
    """A short hash of what shapes a replica's workloads: the spec without the replica count, its bounds,
    the packing strategy and the consent to moves, normalised (defaults left out), so a CRD upgrade adding
    a defaulted field, a strategy change or a consent change does not roll every replica."""
    relevant = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude={"replicas", "scaling"})
    relevant.get("placement", {}).pop("strategy", None)
    relevant.get("placement", {}).pop("rebalance", None)  # consent to moves does not change a replica
    if relevant.get("placement") == {}:
        del relevant["placement"]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


def deployment_key(namespace: str, name: str) -> str:
    """The ``namespace/name`` key reservations use."""
    return f"{namespace}/{name}"


def _lenient_status(body: Mapping[str, Any]) -> DeepSeekDeploymentStatus:
    """The stored status, keeping every well-formed placement and condition even if other fields are odd
    (written by a newer or older dspool): losing a placement would free devices its pods still hold."""
    raw = body.get("status") or {}
    conditions = []
    for item in raw.get("conditions") or []:
        try:
            conditions.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return DeepSeekDeploymentStatus(placements=placements_from_status(raw), conditions=conditions)


def _failed(body: Mapping[str, Any], reason: str, message: str, now: datetime) -> ReconcileResult:
    """Bad spec or unknown model: report it and hold everything as it is (reservations, workloads)."""
    old = _lenient_status(body)
    name = str(body.get("metadata", {}).get("name", ""))
    condition = Condition(type="Ready", status="False", reason=reason, message=message)
    status = DeepSeekDeploymentStatus(
        phase=Phase.FAILED,
        replicas=len(old.placements),
        ready_replicas=0,
        selector=f"{DEPLOYMENT_LABEL}={deployment_label_value(name)},{ROLE_LABEL}=leader",
        placements=old.placements,
        message=message,
        observed_generation=body.get("metadata", {}).get("generation"),
        conditions=_stamp([condition], old.conditions, body.get("metadata", {}).get("generation"), now),
    )
    return ReconcileResult(status=status, events=[Event("Warning", reason, message)], hold=True)


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


def _of_placement(placement: ReplicaPlacement, pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods built for exactly this placement (same spec and nodes), not for an earlier one."""
    fingerprint = placement_fingerprint(placement)
    return [pod for pod in pods if pod.get("metadata", {}).get("labels", {}).get(PLACEMENT_LABEL) == fingerprint]


def _replica_ready(placement: ReplicaPlacement, pods: Sequence[Mapping[str, Any]]) -> bool:
    ready_nodes = {pod.get("spec", {}).get("nodeName") for pod in _of_placement(placement, pods) if _pod_is_ready(pod)}
    return all(node.name in ready_nodes for node in placement.nodes)


def _remove_replica(pool: Pool, deployment: str, index: int, pods: Sequence[Mapping[str, Any]]) -> None:
    """Give a replica's reservation back. Its pods that still run keep their devices (as ``used``) until
    they are gone, exactly as the next pool built from the cluster would count them."""
    pool.release(deployment, index)
    pool.hold_pods(pods)


def _lost_nodes(placement: ReplicaPlacement, pool: Pool, present_nodes: Collection[str] | None) -> list[str]:
    """Nodes of a placement that are gone (or NotReady past the grace period the controller applies)."""
    known = present_nodes if present_nodes is not None else pool.nodes
    return [node.name for node in placement.nodes if node.name not in known]


def reconcile(
    body: Mapping[str, Any],
    catalog: Catalog,
    pool: Pool,
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    settings: ReconcileSettings = ReconcileSettings(),
    present_nodes: Collection[str] | None = None,
    rebalancing: str | None = None,
) -> ReconcileResult:
    """Decide the status and objects of one DSD. ``pool`` already holds this DSD's reservations and is
    updated in place (reserve/release) so the next DSD of the same pass sees what this one took.

    ``present_nodes``: nodes that still exist and are Ready (or NotReady only briefly), cordoned ones
    included: a replica on one of them keeps its place. Default: the nodes of the pool.
    ``rebalancing``: what the pass's rebalancer says about this DSD's waiting replica (the ``Rebalancing``
    condition); moves of this DSD's own replicas are in its ``status.moves`` and driven here.
    """
    spec_body = {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    try:
        dsd = DeepSeekDeployment.model_validate(spec_body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _failed(body, "InvalidSpec", f"{where}: {first['msg']}", now)
    try:
        model = catalog.model(dsd.spec.model)
    except UnknownIdError as exc:
        return _failed(body, "UnknownModel", str(exc), now)

    key = deployment_key(dsd.namespace, dsd.name)
    current_hash = spec_hash(dsd.spec)
    old = _lenient_status(body)
    placements: dict[int, ReplicaPlacement] = {p.replica: p for p in old.placements}
    pods_by_replica = _pods_by_replica(pods)
    events: list[Event] = []
    avoid: dict[int, list[str]] = {}
    site_vllm_image = settings.images.vllm if settings.images is not None else None
    decision_seconds: list[float] = []  # how long each placement decision took (a metric, not a decision input)

    # 2. replicas that lost their node, or whose pods cannot be scheduled there, give their reservation back.
    for index, placement in sorted(placements.items()):
        replica_pods = pods_by_replica.get(index, [])
        lost = _lost_nodes(placement, pool, present_nodes)
        if not lost and placement.accelerator.lower() not in {a.lower() for a in catalog.accelerator_ids}:
            lost = [node.name for node in placement.nodes]  # an accelerator the catalog no longer knows
        stuck = [
            pod.get("spec", {}).get("nodeName") or pod.get("metadata", {}).get("name", "?")
            for pod in _of_placement(placement, replica_pods)
            if (since := _unschedulable_since(pod)) is not None
            and (now - since).total_seconds() > settings.stuck_after_seconds
        ]
        if lost or stuck:
            _remove_replica(pool, key, index, replica_pods)
            del placements[index]
            if stuck:
                avoid[index] = [node.name for node in placement.nodes]
            why = (
                f"node(s) {', '.join(lost)} gone or NotReady"
                if lost
                else f"pods unschedulable on {', '.join(avoid[index])} for over {settings.stuck_after_seconds:.0f}s"
            )
            events.append(Event("Warning", "ReplicaLost", f"replica {index}: {why}; placing it again"))

    # 2b. replicas moving to make room for another DSD: new copy first, the old one goes once it serves.
    moving = advance_moves(
        key, moves_from_status(body.get("status")), placements, pods_by_replica, pool, now,
        lambda placement, replica_pods: _replica_ready(placement, replica_pods), settings.rebalance_policy,
    )  # fmt: skip
    events += [Event(e.type, e.reason, e.message) for e in moving.events]
    copies = {i: placements[i] for i in moving.in_flight_copies if i in placements}  # not replicas yet

    desired, _ = dsd.spec.bounded_replicas()
    current = {i: p for i, p in placements.items() if p.spec_hash == current_hash and i not in copies}
    outdated = {i: p for i, p in placements.items() if p.spec_hash != current_hash and i not in copies}

    def ready(index: int, placement: ReplicaPlacement) -> bool:
        return _replica_ready(placement, pods_by_replica.get(index, []))

    # 3. scale down the up-to-date replicas first, choosing victims that leave the pool least fragmented.
    if len(current) > desired:
        for index in scale_down_victims(pool, list(current.values()), len(current) - desired):
            del current[index]
            _remove_replica(pool, key, index, pods_by_replica.get(index, []))
            events.append(Event("Normal", "ScaledDown", f"removed replica {index}"))

    # 4. place the missing replicas; 5b. without room, give up at most one old replica per pass, only
    # when that makes room, and only once every up-to-date replica already serves.
    refusal: Decision | None = None
    replaced_in_place: int | None = None
    counted_victim = False
    while len(current) < desired:
        used = set(current) | set(outdated) | set(copies)
        index = next(i for i in range(len(used) + 1) if i not in used)
        request = ReplicaRequest.from_spec(dsd.namespace, dsd.name, index, dsd.spec, catalog, site_vllm_image)
        if index in avoid:
            request = request.model_copy(update={"avoid_nodes": avoid[index]})
        started = time.perf_counter()
        decision = place_replica(pool, request, catalog, list(current.values()), demand=settings.demand)
        decision_seconds.append(time.perf_counter() - started)
        if (
            decision.placement is None
            and outdated
            and not replaced_in_place
            and all(ready(i, p) for i, p in current.items())
        ):
            victim_index = max(outdated)
            with pool.trial():  # freeing it may not help: then it keeps serving, still booked
                pool.release(key, victim_index)
                retry = place_replica(pool, request, catalog, list(current.values()), demand=settings.demand)
            if retry.placement is not None:
                pool.release(key, victim_index)
                del outdated[victim_index]
                replaced_in_place = victim_index
                events.append(
                    Event("Normal", "Replacing", f"replica {victim_index} removed to make room for the new spec")
                )
                decision = retry
        if decision.placement is None:
            refusal = decision
            break
        placement = decision.placement.model_copy(update={"replica": index, "spec_hash": current_hash})
        pool.reserve(key, placement)
        if replaced_in_place is not None and not counted_victim:
            # The old replica's pods hold their devices until they are gone: count them as used, so no other
            # DSD books those devices meanwhile (the new replica's pods wait for them, as the scheduler will).
            pool.hold_pods(pods_by_replica.get(replaced_in_place, []))
            counted_victim = True
        current[index] = placement
        events.append(Event("Normal", "Placed", f"replica {index}: {decision.reason}"))

    # 5a. make-before-break: old replicas go once every up-to-date replica serves.
    if outdated and len(current) >= desired and all(ready(i, p) for i, p in current.items()):
        for index in sorted(outdated):
            del outdated[index]
            _remove_replica(pool, key, index, pods_by_replica.get(index, []))
            events.append(Event("Normal", "Replaced", f"replica {index} (old spec) removed; new replicas are Ready"))

    final = sorted({**outdated, **current, **copies}.values(), key=lambda p: p.replica)
    ready_count = min(sum(1 for p in final if ready(p.replica, p)), desired)
    if refusal is not None:
        events.append(Event("Warning", "Unschedulable", refusal.reason))
    phase, conditions, message = _summarize(
        dsd, len(current), ready_count, refusal, old.conditions, now, rolling=bool(outdated),
        rebalancing=rebalancing if refusal is not None else None,
    )  # fmt: skip
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
        moves=moving.moves,
    )
    objects: list[dict[str, Any]] = []
    for placement in final:
        accelerator = catalog.accelerator(placement.accelerator)
        kwargs: dict[str, Any] = {"lws_available": settings.lws_available}
        if settings.images is not None:
            kwargs["images"] = settings.images
        if not settings.mindcluster:
            kwargs["rank_table_pods"] = _of_placement(placement, pods_by_replica.get(placement.replica, []))
        objects.extend(build_replica_objects(dsd, placement, model, accelerator, **kwargs))
    objects.append(build_service(dsd))
    finished = [m for m in moving.events if m.reason == "Moved"]
    return ReconcileResult(
        status=status, objects=objects, events=events, decision_seconds=decision_seconds, desired=desired,
        moves_finished=len(finished), moves_rolled_back=sum(1 for m in moving.events if m.reason == "MoveRolledBack"),
        devices_freed=sum(m.devices for m in finished),
    )  # fmt: skip


def _stamp(
    conditions: Sequence[Condition], previous: Sequence[Condition], generation: int | None, now: datetime
) -> list[Condition]:
    """Set lastTransitionTime (kept when the status did not change) and observedGeneration."""
    before = {c.type: c for c in previous}
    stamped = []
    for condition in conditions:
        old = before.get(condition.type)
        unchanged = old is not None and old.status == condition.status and old.last_transition_time
        when = old.last_transition_time if unchanged and old else now.strftime("%Y-%m-%dT%H:%M:%SZ")
        stamped.append(condition.model_copy(update={"last_transition_time": when, "observed_generation": generation}))
    return stamped


def _summarize(
    dsd: DeepSeekDeployment,
    placed: int,
    ready: int,
    refusal: Decision | None,
    old_conditions: Sequence[Condition],
    now: datetime,
    rolling: bool = False,
    rebalancing: str | None = None,
) -> tuple[Phase, list[Condition], str]:
    desired, bounded = dsd.spec.bounded_replicas()
    if refusal is not None and rolling:
        phase = Phase.PROGRESSING  # old replicas serve while the new spec rolls out one at a time
    elif refusal is not None and placed == 0 and ready == 0:
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
    conditions = [scheduled, ready_condition]
    if rebalancing:
        moving_now = rebalancing.startswith(("moving", "waiting for"))
        conditions.append(
            Condition(type="Rebalancing", status="True" if moving_now else "False",
                      reason="MovesInFlight" if moving_now else ("Possible" if "would move" in rebalancing
                                                                   else "NoPlan"),
                      message=rebalancing)
        )  # fmt: skip
    if dsd.spec.scaling is not None:
        conditions.append(
            Condition(type="Scaling", status="True", reason="Limited", message=bounded)
            if bounded
            else Condition(
                type="Scaling", status="False", reason="WithinBounds", message=f"{desired} replicas asked and run"
            )
        )
    stamped = _stamp(conditions, old_conditions, dsd.metadata.get("generation"), now)
    return phase, stamped, message
