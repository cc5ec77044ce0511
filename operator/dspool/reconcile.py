"""Reconcile one DeepSeekDeployment: a pure function from (object, pool, pods) to (status, objects, events).

The pass (``dspool.loop``) calls it for every DSD with what the watches hold (``dspool.kube.runtime``
keeps the watches; ``dspool.handlers`` is the kopf layer that starts it) and writes back what it returns;
nothing here talks to the API server, so every rule below is unit-tested without a cluster.

:func:`reconcile` runs these steps in order, each a function of its own:
1. an invalid spec or an unknown model is phase Failed with the reason (:func:`_failed`);
2. drop lost replicas (:func:`_drop_lost_replicas`): a replica whose node is gone or NotReady, or whose
   pods stay unschedulable longer than ``stuck_after_seconds``, loses its reservation and is placed again
   (a replica on a cordoned node that still exists keeps its place);
3. advance moves (:func:`_advance_moves`): this DSD's replicas moving to make room for another DSD;
4. scale down (:func:`_scale_down`): more replicas than asked, remove those whose removal leaves the
   pool least fragmented;
5. place missing (:func:`_place_missing`): the lowest free replica indexes, reserving as it goes; when
   rolling to a new spec without room, one old replica per pass is removed to make room for its successor,
   only if that makes room and only once every up-to-date replica serves
   (:func:`_replace_one_old_replica`, rolling in place);
6. retire outdated (:func:`_retire_outdated`): with room, replicas built from an older spec (spec hash)
   are replaced make-before-break: they keep serving until every up-to-date replica is Ready;
7. build the status and the objects (:func:`_build_status`, :func:`_build_objects`).

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
from dspool.backends import Backend
from dspool.catalog import Catalog, ModelSpec, UnknownIdError, Vendor
from dspool.engine_support import engine_refusal, pinned_image_refusal
from dspool.inventory import Pool, hold_pods
from dspool.placement import (
    Decision,
    DemandMix,
    ReplicaRequest,
    place_replica,
    scale_down_victims,
)
from dspool.rebalance import MovesOutcome, RebalancePolicy, advance_moves, moves_from_status
from dspool.sizing import BACKENDS_BY_VENDOR
from dspool.weights.entries import request_entry
from dspool.weights.estimate import Bandwidth
from dspool.weights.state import CacheView
from dspool.weights.status import weights_condition
from dspool.workloads import (
    DEFAULT_IMAGES,
    NO_INTERCONNECT,
    ImageDefaults,
    Interconnect,
    build_replica_objects,
    build_service,
    endpoint_url,
    service_selector,
)

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
    interconnect: Interconnect = NO_INTERCONNECT  # the site's RDMA resource for multi-node NVIDIA replicas
    model_cache_dir: str | None = None  # the node model cache (None: engine pods fetch their own weights)
    model_cache: CacheView = field(default_factory=CacheView)  # what each node's cache holds, this pass


@dataclass
class Event:
    """A Kubernetes event to post on the DeepSeekDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class ReconcileResult:
    """What the pass must write for the DSD: the status, the objects that should exist, and events.

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


def _lost_nodes(placement: ReplicaPlacement, pool: Pool, present_nodes: Collection[str] | None) -> list[str]:
    """Nodes of a placement that are gone (or NotReady past the grace period the pass applies)."""
    known = present_nodes if present_nodes is not None else pool.nodes
    return [node.name for node in placement.nodes if node.name not in known]


@dataclass
class _DeploymentDecision:
    """One DSD's decision in progress: what the steps of :func:`reconcile` read, and the replicas they change.

    ``current`` holds the replicas of the current spec, ``outdated`` those of an older one, ``copies`` the new
    copies of replicas moving away (not replicas yet: no step counts, removes or places them).
    """

    dsd: DeepSeekDeployment
    catalog: Catalog
    pool: Pool
    pods_by_replica: dict[int, list[Mapping[str, Any]]]
    now: datetime
    settings: ReconcileSettings
    key: str = ""
    spec_hash: str = ""
    desired: int = 0
    placements: dict[int, ReplicaPlacement] = field(default_factory=dict)
    current: dict[int, ReplicaPlacement] = field(default_factory=dict)
    outdated: dict[int, ReplicaPlacement] = field(default_factory=dict)
    copies: dict[int, ReplicaPlacement] = field(default_factory=dict)
    avoid: dict[int, list[str]] = field(default_factory=dict)  # replica -> nodes its pods could not get onto
    events: list[Event] = field(default_factory=list)
    decision_seconds: list[float] = field(default_factory=list)  # a metric, not a decision input
    refusal: Decision | None = None
    replaced_in_place: int | None = None

    def __post_init__(self) -> None:
        self.key = deployment_key(self.dsd.namespace, self.dsd.name)
        self.spec_hash = spec_hash(self.dsd.spec)
        self.desired, _ = self.dsd.spec.bounded_replicas()

    def pods(self, index: int) -> list[Mapping[str, Any]]:
        """The pods of replica ``index`` (of any placement it had)."""
        return self.pods_by_replica.get(index, [])

    def ready(self, index: int, placement: ReplicaPlacement) -> bool:
        """Whether every node of the placement runs a Ready pod built for it."""
        return _replica_ready(placement, self.pods(index))

    def all_current_ready(self) -> bool:
        """Whether every replica of the current spec serves."""
        return all(self.ready(i, p) for i, p in self.current.items())

    def remove(self, index: int) -> None:
        """Give a replica's reservation back. Its pods that still run keep their devices (as ``used``) until
        they are gone, exactly as the next pool built from the cluster would count them."""
        self.pool.release(self.key, index)
        hold_pods(self.pool, self.pods(index))

    def final(self) -> list[ReplicaPlacement]:
        """Every placement the DSD keeps after the pass, by replica index."""
        return sorted({**self.outdated, **self.current, **self.copies}.values(), key=lambda p: p.replica)


def _drop_lost_replicas(state: _DeploymentDecision, present_nodes: Collection[str] | None) -> None:
    """Replicas whose node is gone or NotReady, whose accelerator the catalog no longer knows, or whose pods
    stayed unschedulable on their nodes past ``stuck_after_seconds`` give their reservation back, to be
    placed again (a stuck one away from the nodes it could not get onto)."""
    settings = state.settings
    known_accelerators = {a.lower() for a in state.catalog.accelerator_ids}
    for index, placement in sorted(state.placements.items()):
        lost = _lost_nodes(placement, state.pool, present_nodes)
        if not lost and placement.accelerator.lower() not in known_accelerators:
            lost = [node.name for node in placement.nodes]
        stuck = [
            pod.get("spec", {}).get("nodeName") or pod.get("metadata", {}).get("name", "?")
            for pod in _of_placement(placement, state.pods(index))
            if (since := _unschedulable_since(pod)) is not None
            and (state.now - since).total_seconds() > settings.stuck_after_seconds
        ]
        if not (lost or stuck):
            continue
        state.remove(index)
        del state.placements[index]
        if stuck:
            state.avoid[index] = [node.name for node in placement.nodes]
        why = (
            f"node(s) {', '.join(lost)} gone or NotReady"
            if lost
            else f"pods unschedulable on {', '.join(state.avoid[index])} for over {settings.stuck_after_seconds:.0f}s"
        )
        state.events.append(Event("Warning", "ReplicaLost", f"replica {index}: {why}; placing it again"))


def _advance_moves(state: _DeploymentDecision, stored_status: Mapping[str, Any] | None) -> MovesOutcome:
    """Drive the moves of this DSD's replicas one step (new copy first; the old replica goes once the copy
    serves), then sort the placements into current, outdated and new copies in flight."""
    moving = advance_moves(
        state.key, moves_from_status(stored_status), state.placements, state.pods_by_replica, state.pool,
        state.now, _replica_ready, state.settings.rebalance_policy,
    )  # fmt: skip
    state.events += [Event(e.type, e.reason, e.message) for e in moving.events]
    state.copies = {i: state.placements[i] for i in moving.in_flight_copies if i in state.placements}
    for index, placement in state.placements.items():
        if index not in state.copies:
            (state.current if placement.spec_hash == state.spec_hash else state.outdated)[index] = placement
    return moving


def _scale_down(state: _DeploymentDecision) -> None:
    """More replicas of the current spec than desired: remove those whose removal leaves the pool least
    fragmented (old-spec replicas are left to :func:`_retire_outdated`)."""
    if len(state.current) <= state.desired:
        return
    for index in scale_down_victims(state.pool, list(state.current.values()), len(state.current) - state.desired):
        del state.current[index]
        state.remove(index)
        state.events.append(Event("Normal", "ScaledDown", f"removed replica {index}"))


def _place_missing(state: _DeploymentDecision) -> None:
    """Place the missing replicas of the current spec (lowest free indexes first), reserving as it goes;
    stop at the first one that finds no room (``state.refusal``), unless replacing an old replica in place
    makes room for it (:func:`_replace_one_old_replica`)."""
    site_vllm_image = state.settings.images.vllm if state.settings.images is not None else None
    while len(state.current) < state.desired:
        taken = set(state.current) | set(state.outdated) | set(state.copies)
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        dsd = state.dsd
        request = ReplicaRequest.from_spec(dsd.namespace, dsd.name, index, dsd.spec, state.catalog, site_vllm_image)
        if index in state.avoid:
            request = request.model_copy(update={"avoid_nodes": state.avoid[index]})
        started = time.perf_counter()
        decision = _decide(state, request)
        state.decision_seconds.append(time.perf_counter() - started)
        if decision.placement is not None:
            _book(state, index, decision)
        elif not _replace_one_old_replica(state, index, request):
            state.refusal = decision
            state.events.append(Event("Warning", "Unschedulable", decision.reason))
            return


def _decide(state: _DeploymentDecision, request: ReplicaRequest) -> Decision:
    """Where the replica would go now, next to the DSD's other current replicas; with a node model cache,
    among equally good places the one whose weights are ready sooner."""
    settings, peers = state.settings, list(state.current.values())
    if settings.model_cache_dir is None:
        return place_replica(state.pool, request, state.catalog, peers, demand=settings.demand)
    request.cache_entry = request_entry(state.dsd.spec, request.model)
    return place_replica(state.pool, request, state.catalog, peers, settings.demand, settings.model_cache, Bandwidth())


def _book(state: _DeploymentDecision, index: int, decision: Decision) -> None:
    """Reserve a decided placement as replica ``index`` of the current spec."""
    assert decision.placement is not None
    placement = decision.placement.model_copy(update={"replica": index, "spec_hash": state.spec_hash})
    state.pool.reserve(state.key, placement)
    state.current[index] = placement
    state.events.append(Event("Normal", "Placed", f"replica {index}: {decision.reason}"))


def _replace_one_old_replica(state: _DeploymentDecision, index: int, request: ReplicaRequest) -> bool:
    """Rolling without room: remove the highest old-spec replica and place ``index`` in its stead, at most
    once per pass, only once every current replica serves, and only if its devices make the room (else it
    keeps serving, still booked). Returns whether it did."""
    if not state.outdated or state.replaced_in_place is not None or not state.all_current_ready():
        return False
    victim = max(state.outdated)
    with state.pool.trial():
        state.pool.release(state.key, victim)
        decision = _decide(state, request)
    if decision.placement is None:
        return False
    state.pool.release(state.key, victim)
    del state.outdated[victim]
    state.replaced_in_place = victim
    state.events.append(Event("Normal", "Replacing", f"replica {victim} removed to make room for the new spec"))
    _book(state, index, decision)
    # The old replica's pods hold their devices until they are gone: count them as used, so no other DSD
    # books those devices meanwhile (the new replica's pods wait for them, as the scheduler will).
    hold_pods(state.pool, state.pods(victim))
    return True


def _retire_outdated(state: _DeploymentDecision) -> None:
    """Make-before-break: once the current spec has every desired replica placed and serving, the old-spec
    replicas go."""
    if not state.outdated or len(state.current) < state.desired or not state.all_current_ready():
        return
    for index in sorted(state.outdated):
        del state.outdated[index]
        state.remove(index)
        state.events.append(Event("Normal", "Replaced", f"replica {index} (old spec) removed; new replicas are Ready"))


def _build_status(
    state: _DeploymentDecision,
    model: ModelSpec,
    final: Sequence[ReplicaPlacement],
    old: DeepSeekDeploymentStatus,
    moving: MovesOutcome,
    rebalancing: str | None,
) -> DeepSeekDeploymentStatus:
    """The status to write: phase and conditions, the placements kept, Ready replicas (at most desired)."""
    dsd = state.dsd
    ready_count = min(sum(1 for p in final if state.ready(p.replica, p)), state.desired)
    phase, conditions, message = _summarize(
        dsd, len(state.current), ready_count, state.refusal, old.conditions, state.now, rolling=bool(state.outdated),
        rebalancing=rebalancing if state.refusal is not None else None,
        interconnect=interconnect_condition(final, state.catalog, state.settings.interconnect),
        weights=(
            weights_condition(dsd.spec, model, final, state.settings.model_cache, state.now)
            if state.settings.model_cache_dir is not None
            else None
        ),
    )  # fmt: skip
    return DeepSeekDeploymentStatus(
        phase=phase,
        replicas=len(final),
        ready_replicas=ready_count,
        selector=",".join(f"{k}={v}" for k, v in service_selector(dsd).items()),
        placements=list(final),
        endpoint=endpoint_url(dsd),
        conditions=conditions,
        observed_generation=dsd.metadata.get("generation"),
        message=message,
        moves=moving.moves,
    )


def _build_objects(
    state: _DeploymentDecision, model: ModelSpec, final: Sequence[ReplicaPlacement]
) -> list[dict[str, Any]]:
    """Every replica's workloads, then the DSD's Service. Without MindCluster each replica gets its pods, from
    which a multi-node MindIE replica's rank table is written."""
    settings = state.settings
    objects: list[dict[str, Any]] = []
    for placement in final:
        accelerator = state.catalog.accelerator(placement.accelerator)
        kwargs: dict[str, Any] = {
            "lws_available": settings.lws_available,
            "interconnect": settings.interconnect,
            "model_cache_dir": settings.model_cache_dir,
        }
        if settings.images is not None:
            kwargs["images"] = settings.images
        if not settings.mindcluster:
            kwargs["rank_table_pods"] = _of_placement(placement, state.pods(placement.replica))
        objects.extend(build_replica_objects(state.dsd, placement, model, accelerator, **kwargs))
    objects.append(build_service(state.dsd))
    return objects


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
    unservable = engine_refusal_for(dsd.spec, model, catalog, settings.images or DEFAULT_IMAGES)
    if unservable is not None:
        return _failed(body, "EngineUnsupported", unservable, now)

    old = _lenient_status(body)
    state = _DeploymentDecision(dsd, catalog, pool, _pods_by_replica(pods), now, settings)
    state.placements = {p.replica: p for p in old.placements}
    _drop_lost_replicas(state, present_nodes)
    moving = _advance_moves(state, body.get("status"))
    _scale_down(state)
    _place_missing(state)
    _retire_outdated(state)
    final = state.final()
    status = _build_status(state, model, final, old, moving, rebalancing)
    finished = [m for m in moving.events if m.reason == "Moved"]
    return ReconcileResult(
        status=status, objects=_build_objects(state, model, final), events=state.events,
        decision_seconds=state.decision_seconds, desired=state.desired, moves_finished=len(finished),
        moves_rolled_back=sum(1 for m in moving.events if m.reason == "MoveRolledBack"),
        devices_freed=sum(m.devices for m in finished),
    )  # fmt: skip


def engine_refusal_for(
    spec: DeepSeekDeploymentSpec, model: ModelSpec, catalog: Catalog, images: ImageDefaults
) -> str | None:
    """Why no engine the DSD may run serves its checkpoint with the image it would run (``serving.image``, which
    every engine would run, else the operator's image for that engine), or None. The engines considered: the
    one asked for, else those of the vendors ``acceleratorTypes`` allows (all when it names none)."""
    vendors = {
        a.vendor for a in catalog.accelerators if a.id.lower() in {t.lower() for t in spec.placement.accelerator_types}
    }
    if spec.backend != "auto":
        backends: list[Backend] = [Backend(spec.backend)]
    else:
        backends = [b for vendor in (vendors or set(Vendor)) for b in BACKENDS_BY_VENDOR[vendor]]
    defaults = images.by_backend()
    pinned = spec.serving.image
    reasons = []
    for backend in sorted(set(backends)):
        if pinned is not None:
            why = pinned_image_refusal(model.architecture, backend, pinned)
        else:
            why = engine_refusal(model.architecture, backend, defaults[backend])
        if why is None:
            return None
        reasons.append(why)
    fix = (
        "pin a newer release in spec.serving.image"
        if pinned is None
        else "remove spec.serving.image or pin a newer release"
    )
    return f"no engine this DSD may run serves {model.id}: {'; '.join(reasons)}; {fix}"


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
    interconnect: Condition | None = None,
    weights: Condition | None = None,
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
    conditions += [c for c in (interconnect, weights) if c is not None]
    stamped = _stamp(conditions, old_conditions, dsd.metadata.get("generation"), now)
    return phase, stamped, message


def interconnect_condition(
    placements: Sequence[ReplicaPlacement], catalog: Catalog, interconnect: Interconnect
) -> Condition | None:
    """The ``Interconnect`` condition of a DSD with multi-node replicas (None without any): whether their
    collectives have RDMA. NVIDIA replicas need the site's RDMA resource (``--rdma-resource``); Ascend NPUs
    carry their own RoCE ports, which HCCL uses through the rank table."""
    spanning = [p for p in placements if len(p.nodes) > 1]
    if not spanning:
        return None
    nvidia = [p for p in spanning if catalog.accelerator(p.accelerator).vendor == Vendor.NVIDIA]
    if not nvidia:
        return Condition(
            type="Interconnect",
            status="True",
            reason="NPURoCE",
            message="multi-node Ascend replicas: HCCL runs over the NPUs' own RoCE ports (rank table)",
        )
    if interconnect.rdma_resource is None:
        replicas = ", ".join(str(p.replica) for p in nvidia)
        return Condition(
            type="Interconnect", status="False", reason="NoRDMA",
            message=f"replicas {replicas} span nodes without an RDMA resource: NCCL falls back to TCP on the pod "
            "network, far too slow for a model split over nodes; set the operator's --rdma-resource (chart value "
            "operator.rdmaResource) to the resource your RDMA device plugin advertises",
        )  # fmt: skip
    return Condition(type="Interconnect", status="True", reason="RDMA",
                     message=f"multi-node replicas request {interconnect.rdma_count} x {interconnect.rdma_resource} "
                     "per pod")  # fmt: skip
