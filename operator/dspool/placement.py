"""The placement engine: which accelerator type and which nodes each replica gets, and why.

Pure and deterministic (ties broken by node, fabric and accelerator name). Deciding changes no pool;
booking is the :class:`~dspool.inventory.Pool`'s own (``Pool.reserve``/``release``; :func:`reserve` and
:func:`release` here are the same, kept for callers that hold a pool and a placement). The rules are in
``docs/placement.md``; in short:

1. Candidate types: the allowed accelerator types (``acceleratorTypes``, or any) that have at least one
   node passing the filters (nodeSelector labels; NoSchedule/NoExecute taints tolerated by the request,
   dspool always tolerating the device taints ``nvidia.com/gpu``, ``huawei.com/Ascend910|310P``).
2. Each candidate type is sized by :func:`dspool.sizing.plan` with the memory the nodes report (the
   minimum over the type's nodes) and the largest allocatable device count as the server size.
3. ``binpack`` ranks feasible types by the user's preference order when given, else fewest nodes per
   replica (single-node first), then the smallest adequate type (least device memory claimed), then most free devices;
   the first type with room wins. Within a type, best fit: the node with the fewest free devices that
   still fit. ``spread`` ranks types the same way and picks the node without peers and with most free.
4. Multi-node replicas (PP > 1) are gang-placed: PP nodes with TP free devices each, all in one fabric
   domain, or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from dspool.api import DeepSeekDeploymentSpec, NodeDevices, ReplicaPlacement, Strategy, Toleration
from dspool.catalog import Catalog, ModelSpec, UnknownIdError
from dspool.inventory import FreeIndex, InsufficientDevicesError, NodeState, Pool, devices_by_node
from dspool.plancache import model_fingerprint, sized_plan
from dspool.scarcity import DemandMix, Loss, catalog_mix, mix_shapes, placement_loss
from dspool.sizing import DEFAULT_KV_CACHE_TOKENS, Plan, SizingRequest

__all__ = [
    "Decision",
    "DemandMix",
    "InsufficientDevicesError",
    "ReplicaRequest",
    "TypeCandidate",
    "feasible_types",
    "fragmentation",
    "node_admits",
    "place_replica",
    "place_replicas",
    "placement_from_plan",
    "release",
    "reserve",
    "scale_down_victims",
    "sized_plan",
    "tolerates",
]

# dspool's serving pods always tolerate the device taints of the accelerators they ask for.
ACCELERATOR_TAINT_KEYS = frozenset({"nvidia.com/gpu", "huawei.com/Ascend910", "huawei.com/Ascend310P"})
BLOCKING_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
MAX_ALTERNATIVES_IN_REASON = 3
COST_EPSILON_GIB = 1e-6


class ReplicaRequest(BaseModel):
    """One replica to place: the model, how to size it and where it may go."""

    deployment: str = Field(description="namespace/name of the DeepSeekDeployment")
    replica: int = Field(ge=0)
    model: ModelSpec
    sizing: SizingRequest = Field(default_factory=SizingRequest)
    accelerator_types: list[str] = Field(default_factory=list, description="preference order; empty = any")
    strategy: Strategy = Strategy.BINPACK
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    allow_multi_node: bool = True
    avoid_nodes: list[str] = Field(default_factory=list, description="nodes this replica just failed on")

    @classmethod
    def from_spec(
        cls,
        namespace: str,
        name: str,
        replica: int,
        spec: DeepSeekDeploymentSpec,
        catalog: Catalog,
        default_engine_image: str | None = None,
    ) -> ReplicaRequest:
        """The request for replica ``replica`` of a DeepSeekDeployment spec.

        ``default_engine_image``: the vLLM image the operator runs when the spec pins none, if the site
        replaced dspool's own default (what the image supports decides the precision on Ampere).
        """
        serving = spec.serving
        return cls(
            deployment=f"{namespace}/{name}",
            replica=replica,
            model=catalog.model(spec.model),
            sizing=SizingRequest(
                precision=spec.precision,
                backend=spec.backend,
                kv_cache_tokens=serving.kv_cache_tokens or DEFAULT_KV_CACHE_TOKENS,
                max_model_len=serving.max_model_len,
                gpu_memory_utilization=serving.gpu_memory_utilization,
                engine_image=serving.image or default_engine_image,
                parallelism=serving.parallelism.value,
                kv_cache_dtype=serving.kv_cache_dtype.value,
                speculative_tokens=(
                    serving.speculative_decoding.num_speculative_tokens if serving.speculative_decoding else 0
                ),
            ),
            accelerator_types=list(spec.placement.accelerator_types),
            strategy=spec.placement.strategy,
            node_selector=dict(spec.placement.node_selector),
            tolerations=list(spec.placement.tolerations),
            allow_multi_node=spec.placement.allow_multi_node,
        )


class Decision(BaseModel):
    """The outcome for one replica: a placement (or None) and a sentence saying why."""

    placement: ReplicaPlacement | None
    reason: str
    plan: Plan | None = None


# --------------------------------------------------------------------------------------------- filters


def tolerates(tolerations: Sequence[Toleration], taint: dict[str, Any]) -> bool:
    """Whether one of ``tolerations`` tolerates ``taint``, with Kubernetes' matching rules."""
    key = taint.get("key") or ""
    value = taint.get("value") or ""
    effect = taint.get("effect")
    for toleration in tolerations:
        if toleration.effect and toleration.effect != effect:
            continue
        operator = toleration.operator or "Equal"
        if not toleration.key:
            if operator == "Exists":
                return True
            continue
        if toleration.key != key:
            continue
        if operator == "Exists" or (toleration.value or "") == value:
            return True
    return False


def node_admits(node: NodeState, node_selector: dict[str, str], tolerations: Sequence[Toleration]) -> bool:
    """Whether a replica with this nodeSelector and these tolerations may run on ``node``."""
    labels = node.labels
    if any(labels.get(key) != value for key, value in node_selector.items()):
        return False
    return all(
        tolerates(tolerations, taint)
        for taint in node.taints
        if taint.get("effect") in BLOCKING_TAINT_EFFECTS and taint.get("key") not in ACCELERATOR_TAINT_KEYS
    )


@dataclass(frozen=True)
class _TypeView:
    """The nodes of one accelerator type a request may use (fixed for a pool and a filter)."""

    accelerator: str
    nodes: tuple[NodeState, ...]  # sorted by name
    domains: tuple[tuple[str, tuple[NodeState, ...]], ...]  # fabric domain -> nodes, sorted by domain
    fabric_labelled: bool
    device_memory_gib: float
    devices_per_node: int
    complete: bool  # every node of the type passed the filters: the pool's FreeIndex answers for it


@dataclass(frozen=True)
class _PoolView:
    key: tuple[Any, ...]  # the request's filters (nodeSelector, tolerations, nodes avoided)
    types: dict[str, _TypeView]
    excluded: dict[str, int]  # accelerator -> nodes dropped by the filters


def _filter_key(request: ReplicaRequest) -> tuple[Any, ...]:
    return (
        "filter",
        tuple(sorted(request.node_selector.items())),
        tuple((t.key, t.operator, t.value, t.effect) for t in request.tolerations),
        tuple(sorted(request.avoid_nodes)),
    )


def _pool_view(pool: Pool, request: ReplicaRequest) -> _PoolView:
    key = _filter_key(request)

    def compute() -> _PoolView:
        types: dict[str, _TypeView] = {}
        excluded: dict[str, int] = {}
        for accelerator, nodes in pool.by_accelerator().items():
            admitted = tuple(
                n
                for n in nodes
                if n.name not in request.avoid_nodes and node_admits(n, request.node_selector, request.tolerations)
            )
            if len(admitted) < len(nodes):
                excluded[accelerator] = len(nodes) - len(admitted)
            if not admitted:
                continue
            domains: dict[str, list[NodeState]] = {}
            for node in admitted:
                domains.setdefault(node.fabric_domain, []).append(node)
            types[accelerator] = _TypeView(
                accelerator=accelerator,
                nodes=admitted,
                domains=tuple((d, tuple(domains[d])) for d in sorted(domains)),
                fabric_labelled=any(n.fabric is not None for n in admitted),
                device_memory_gib=min(n.device_memory_gib for n in admitted),
                devices_per_node=max(n.allocatable for n in admitted),
                complete=len(admitted) == len(nodes),
            )
        return _PoolView(key=key, types=types, excluded=excluded)

    return pool.memo(key, compute)


# ------------------------------------------------------------------------------------------- node choice


@dataclass
class _Choice:
    """Nodes picked for one replica on one type (one per pipeline stage), with the fit's description."""

    nodes: list[NodeState]
    domain: str
    leftover: int
    peers_shared: int


@dataclass
class _TypeOutcome:
    """What one accelerator type offers a request."""

    view: _TypeView
    plan: Plan
    choice: _Choice | None = None
    shortfall: str = ""  # why there is no room, when choice is None
    free_total: int = 0
    notes: list[str] = field(default_factory=list)
    loss: Loss | None = None  # what the choice costs the other models of the demand mix (binpack)
    cost: float = 0.0  # memory claimed + loss, GiB (binpack)

    @property
    def multi_node(self) -> bool:
        return self.plan.nodes_per_replica > 1

    @property
    def memory_claimed(self) -> float:
        return self.plan.devices_per_replica * self.view.device_memory_gib


def _choose_single(
    view: _TypeView, need: int, strategy: Strategy, peer_nodes: set[str], index: FreeIndex | None = None
) -> tuple[_Choice | None, str]:
    """One node for a single-node replica; nodes are sorted by name, so strict comparisons keep the first name.

    ``index``: the pool's FreeIndex, which finds binpack's best fit without a scan when the view holds every
    node of its type (it returns what the scan would).
    """
    if index is not None and strategy == Strategy.BINPACK and view.complete:
        fit = index.best_fit(view.accelerator, need)
        if fit is not None:
            return _Choice([fit], fit.fabric_domain, fit.free - need, 0), ""
        roomy = index.roomiest(view.accelerator)
        best_text = f"best: {roomy.name} with {roomy.free} free" if roomy is not None else "no nodes"
        return None, f"{view.accelerator} needs {need} free on one node ({best_text})"
    best: NodeState | None = None
    best_key: tuple[int, int] = (0, 0)
    roomiest: NodeState | None = None
    roomiest_free = -1
    spread = strategy == Strategy.SPREAD
    for node in view.nodes:  # the hot loop of the engine: no properties, no allocations on the common path
        free = node.allocatable - node.used - node.reserved
        if free > roomiest_free:
            roomiest, roomiest_free = node, free
        if free < need:
            continue
        if spread:  # away from peers, then most free
            key = (int(node.name in peer_nodes), -free)
            if best is None or key < best_key:
                best, best_key = node, key
        elif best is None or free < best_key[1]:  # binpack: fewest free that still fit
            best, best_key = node, (0, free)
            if free == need:  # an exact fit cannot be beaten, and later names lose ties
                break
    if best is not None:
        return _Choice([best], best.fabric_domain, best.free - need, int(best.name in peer_nodes)), ""
    best_text = f"best: {roomiest.name} with {max(0, roomiest_free)} free" if roomiest is not None else "no nodes"
    return None, f"{view.accelerator} needs {need} free on one node ({best_text})"


def _choose_gang(
    view: _TypeView,
    stages: int,
    per_stage: int,
    strategy: Strategy,
    peer_nodes: set[str],
    index: FreeIndex | None = None,
) -> tuple[_Choice | None, str]:
    """Nodes in one fabric domain for a multi-node replica.

    ``index``: the pool's FreeIndex; for binpack over a view that holds every node of its type, it gives each
    domain's best-fitting nodes and free total without a scan of the domain (the same nodes the scan picks).
    """
    if len(view.nodes) < stages:
        return None, (
            f"{view.accelerator}: {stages * per_stage} devices over {stages} nodes, "
            f"only {len(view.nodes)} node{'s' if len(view.nodes) != 1 else ''} in pool"
        )
    best: _Choice | None = None
    best_key: tuple[Any, ...] = ()
    spread = strategy == Strategy.SPREAD
    indexed = index if index is not None and not spread and view.complete else None
    for domain, nodes in view.domains:  # hot: free counts read once per node, no sorting of whole fabrics
        if indexed is not None:
            picked = indexed.domain_best_fits(view.accelerator, domain, per_stage, stages)
            if len(picked) < stages:
                continue
            domain_free = indexed.domain_free(view.accelerator, domain)
        else:
            domain_free = 0
            fitting: list[tuple[int, NodeState]] = []
            for node in nodes:
                free = max(0, node.allocatable - node.used - node.reserved)
                domain_free += free
                if free >= per_stage:
                    fitting.append((free, node))
            if len(fitting) < stages:
                continue
            if spread:
                fitting.sort(key=lambda item: (item[1].name in peer_nodes, -item[0], item[1].name))
            else:
                fitting.sort(key=lambda item: (item[0], item[1].name))
            picked = fitting[:stages]
        leftover = sum(free for free, _ in picked) - stages * per_stage
        shared = sum(node.name in peer_nodes for _, node in picked)
        # binpack: least left over on the chosen nodes, then the fullest fabric (keeps roomy fabrics whole);
        # spread: fewest peers, then the roomiest nodes and fabric
        key: tuple[Any, ...] = (shared, -leftover, -domain_free, domain) if spread else (leftover, domain_free, domain)
        if best is None or key < best_key:
            best = _Choice(sorted((node for _, node in picked), key=lambda n: n.name), domain, leftover, shared)
            best_key = key
    if best is not None:
        return best, ""
    closest: tuple[int, str, list[NodeState]] | None = None  # only a refusal needs it: the roomiest fabric
    for domain, nodes in view.domains:
        roomiest = sorted(nodes, key=lambda n: (-n.free, n.name))[:stages]
        room = sum(min(n.free, per_stage) for n in roomiest)
        if closest is None or room > closest[0]:
            closest = (room, domain, roomiest)
    in_fabric = " in one fabric" if view.fabric_labelled else ""
    detail = ""
    if closest is not None:
        listed = ", ".join(f"{n.name} {n.free} free" for n in closest[2])
        detail = f" (best: {closest[1]}: {listed})" if view.fabric_labelled else f" (best: {listed})"
    return None, f"{view.accelerator} needs {stages} nodes x {per_stage} free{in_fabric}{detail}"


def _evaluate(
    view: _TypeView,
    sized: Plan,
    strategy: Strategy,
    peer_nodes: set[str],
    free_total: bool,
    index: FreeIndex | None = None,
) -> _TypeOutcome:
    outcome = _TypeOutcome(view=view, plan=sized)
    if free_total:
        outcome.free_total = _type_free_total(view, index)
    if sized.nodes_per_replica > 1:
        outcome.choice, outcome.shortfall = _choose_gang(
            view, sized.nodes_per_replica, sized.devices_per_node, strategy, peer_nodes, index
        )
    else:
        outcome.choice, outcome.shortfall = _choose_single(view, sized.devices_per_node, strategy, peer_nodes, index)
    return outcome


def _type_free_total(view: _TypeView, index: FreeIndex | None) -> int:
    if index is not None and view.complete:
        return index.free_total(view.accelerator)
    return sum(n.free for n in view.nodes)


# --------------------------------------------------------------------------------------------- decisions


def _canonical_types(requested: Sequence[str], catalog: Catalog) -> list[str]:
    result: list[str] = []
    for wanted in requested:
        try:
            canonical = catalog.accelerator(wanted).id
        except UnknownIdError:
            canonical = wanted
        if canonical not in result:
            result.append(canonical)
    return result


def _shape(sized: Plan) -> str:
    if sized.nodes_per_replica > 1:
        return f"{sized.devices_per_replica} devices over {sized.nodes_per_replica} nodes"
    return f"{sized.devices_per_replica} device{'s' if sized.devices_per_replica != 1 else ''} on one node"


def _describe_choice(outcome: _TypeOutcome, strategy: Strategy) -> str:
    choice = outcome.choice
    assert choice is not None
    sized = outcome.plan
    fit = "most free" if strategy == Strategy.SPREAD else "best fit"
    if choice.peers_shared:
        fit += f", shares {choice.peers_shared} node{'s' if choice.peers_shared > 1 else ''} with a peer replica"
    if len(choice.nodes) == 1:
        node = choice.nodes[0]
        return f"{sized.accelerator} {node.name} ({node.free} of {node.allocatable} free; {fit})"
    nodes = ", ".join(f"{n.name} ({n.free} of {n.allocatable} free)" for n in choice.nodes)
    where = f" in fabric {choice.domain}" if outcome.view.fabric_labelled else ""
    return (
        f"{sized.accelerator} {sized.layout} gang of {len(choice.nodes)} nodes{where}: {nodes}; "
        f"{fit}, {choice.leftover} left over"
    )


def _ordinal(position: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(position if position < 20 else position % 10, "th")
    return f"{position}{suffix}"


def _success_reason(
    winner: _TypeOutcome,
    ranked: list[_TypeOutcome],
    preferred: bool,
    infeasible: list[Plan],
    strategy: Strategy,
) -> str:
    position = ranked.index(winner)
    if preferred:
        why = f"{_ordinal(position + 1)} choice in acceleratorTypes"
    elif position == 0 and len(ranked) > 1:
        why = "smallest adequate type"
    elif position == 0:
        why = "only type the model fits in the pool"
    elif strategy == Strategy.SPREAD:
        why = "smallest adequate type with a node free of peer replicas"
    else:
        why = "smallest adequate type with room"
    notes = [
        o.shortfall or f"{o.plan.accelerator} has room only on nodes holding peer replicas" for o in ranked[:position]
    ]
    later = [o for o in ranked[position + 1 :]]
    notes += [f"{o.plan.accelerator} needs {_shape(o.plan)}" for o in later[:1]]
    notes += [f"{p.accelerator} too small" for p in infeasible]
    return _with_notes(f"{_describe_choice(winner, strategy)} — {why}", notes)


def _type_tiers(feasible: list[tuple[_TypeView, Plan]], preferred: bool) -> list[list[tuple[_TypeView, Plan]]]:
    """Feasible types in the order binpack tries them, grouped into ties (ranked by most free devices).

    With an explicit ``acceleratorTypes`` list each type is its own tier, in the user's order. Otherwise
    the fewest nodes per replica first (single-node before multi-node: NVLink beats the network, and a
    2-node gang beats a 5-node one), then the least device memory claimed per replica.
    """
    if preferred:
        return [[item] for item in feasible]

    def rank(item: tuple[_TypeView, Plan]) -> tuple[int, float]:
        type_view, sized = item
        return (sized.nodes_per_replica, round(sized.devices_per_replica * type_view.device_memory_gib, 3))

    tiers: list[list[tuple[_TypeView, Plan]]] = []
    for item in sorted(feasible, key=lambda i: (*rank(i), i[1].accelerator)):
        if tiers and rank(tiers[-1][0]) == rank(item):
            tiers[-1].append(item)
        else:
            tiers.append([item])
    return tiers


def placement_from_plan(sized: Plan, nodes: Sequence[str], replica: int) -> ReplicaPlacement:
    """The placement of a feasible plan on these nodes (one pipeline stage of TP devices on each)."""
    assert sized.precision is not None and sized.backend is not None
    # built from a feasible plan, so valid by construction: no validation on the placement hot path
    return ReplicaPlacement.model_construct(
        replica=replica,
        accelerator=sized.accelerator,
        precision=sized.precision,
        backend=sized.backend,
        tensor_parallel=sized.tensor_parallel,
        pipeline_parallel=sized.pipeline_parallel,
        data_parallel=sized.data_parallel,
        max_model_len=sized.max_model_len,
        nodes=[NodeDevices.model_construct(name=name, devices=sized.devices_per_node) for name in nodes],
    )


def _with_notes(head: str, notes: list[str]) -> str:
    """``head`` and at most MAX_ALTERNATIVES_IN_REASON notes ('N more' for the rest)."""
    shown = notes[:MAX_ALTERNATIVES_IN_REASON]
    if len(notes) > len(shown):
        shown.append(f"{len(notes) - len(shown)} more")
    return head + (f"; {'; '.join(shown)}" if shown else "")


def _filter_note(pool: Pool, request: ReplicaRequest, excluded: int) -> str:
    """'N nodes excluded by nodeSelector/taints', telling apart the nodes the replica is avoiding."""
    avoided = min(excluded, sum(1 for name in set(request.avoid_nodes) if name in pool.nodes))
    filtered = excluded - avoided
    parts = [f"{filtered} node{'s' if filtered != 1 else ''} excluded by nodeSelector/taints"] if filtered else []
    if avoided:
        parts.append(f"{avoided} node{'s' if avoided != 1 else ''} avoided (the replica leaves or failed there)")
    return "; ".join(parts)


def _memory_claimed(item: tuple[_TypeView, Plan]) -> float:
    type_view, sized = item
    return round(sized.devices_per_replica * type_view.device_memory_gib, 3)


def _free_total(outcome: _TypeOutcome, index: FreeIndex) -> int:
    if not outcome.free_total:
        outcome.free_total = _type_free_total(outcome.view, index)
    return outcome.free_total


def _least_cost(
    pool: Pool,
    feasible: list[tuple[_TypeView, Plan]],
    request: ReplicaRequest,
    catalog: Catalog,
    demand: DemandMix | None,
) -> tuple[_TypeOutcome | None, list[_TypeOutcome], list[_TypeOutcome]]:
    """binpack without a preference order: (winner, evaluated outcomes, every type in rank order).

    Groups by nodes per replica (fewest first; the first group with room decides). Inside a group the
    types are tried by memory claimed; each one with room costs memory claimed + its loss to the demand
    mix; the lowest cost wins (ties: most free devices, then id). The loss is never negative, so once a
    type claims more memory than the best cost so far, it and the rest of the group cannot win.
    """
    shapes = mix_shapes(pool, demand if demand is not None else catalog_mix(catalog), catalog)
    index = pool.free_index()
    winner: _TypeOutcome | None = None
    evaluated: list[_TypeOutcome] = []
    ranked: list[_TypeOutcome] = []
    for group in _cost_groups(pool, feasible):
        if winner is not None:
            ranked.extend(_TypeOutcome(view=v, plan=p) for _, v, p in group)
            continue
        for memory, type_view, sized in group:
            if winner is not None and memory > winner.cost + COST_EPSILON_GIB:
                ranked.append(_TypeOutcome(view=type_view, plan=sized))
                continue
            outcome = _evaluate(type_view, sized, Strategy.BINPACK, set(), free_total=False, index=index)
            evaluated.append(outcome)
            ranked.append(outcome)
            if outcome.choice is None:
                continue
            taken = [(n, sized.devices_per_node) for n in outcome.choice.nodes]
            outcome.loss = placement_loss(shapes, type_view.accelerator, taken, request.model.id, index)
            outcome.cost = memory + outcome.loss.gib
            if winner is None or _cheaper(outcome, winner, index):
                winner = outcome
    return winner, evaluated, ranked


_CostGroups = list[list[tuple[float, _TypeView, Plan]]]


def _cost_groups(pool: Pool, feasible: list[tuple[_TypeView, Plan]]) -> _CostGroups:
    """The feasible types grouped by nodes per replica (fewest first), each group by memory claimed, then id.

    Memoised on the pool for this very ``feasible`` list (itself memoised by ``_sized_candidates``)."""

    def compute() -> tuple[list[tuple[_TypeView, Plan]], _CostGroups]:
        groups: dict[int, list[tuple[float, _TypeView, Plan]]] = {}
        claimed = [(_memory_claimed(item), *item) for item in feasible]
        for memory, type_view, sized in sorted(claimed, key=lambda i: (i[2].nodes_per_replica, i[0], i[2].accelerator)):
            groups.setdefault(sized.nodes_per_replica, []).append((memory, type_view, sized))
        return feasible, list(groups.values())

    computed_for, groups = pool.memo(("cost-groups", id(feasible)), compute)
    if computed_for is not feasible:  # the id of a list the memo no longer holds, reused: rare, not cached
        computed_for, groups = compute()
    return groups


def _cheaper(outcome: _TypeOutcome, best: _TypeOutcome, index: FreeIndex) -> bool:
    """Lower cost; on equal cost (within rounding), more free devices, then the lower accelerator id."""
    if outcome.cost < best.cost - COST_EPSILON_GIB:
        return True
    if outcome.cost > best.cost + COST_EPSILON_GIB:
        return False
    mine = (-_free_total(outcome, index), outcome.plan.accelerator)
    return mine < (-_free_total(best, index), best.plan.accelerator)


def _least_cost_reason(winner: _TypeOutcome, ranked: list[_TypeOutcome], infeasible: list[Plan]) -> str:
    """The reason of a least-cost binpack decision: where, why this type, and what the others lacked."""
    position = ranked.index(winner)
    passed_over = [o for o in ranked[:position] if o.choice is not None]
    no_room = [o for o in ranked[:position] if o.choice is None]
    notes: list[str] = []
    if passed_over:
        alternative = min(passed_over, key=lambda o: _memory_claimed((o.view, o.plan)))
        loss = alternative.loss
        if loss is not None and loss.worst is not None:
            why = (
                f"{winner.plan.accelerator} chosen over {alternative.plan.accelerator}: "
                f"{alternative.plan.accelerator} nodes are where {loss.worst.describe()}"
            )
        else:
            why = f"{winner.plan.accelerator} chosen over {alternative.plan.accelerator}: more free devices"
        notes += [
            f"{o.plan.accelerator} nodes are where {o.loss.worst.describe()}"
            for o in passed_over
            if o is not alternative and o.loss is not None and o.loss.worst is not None
        ]
    elif position == 0 and len(ranked) > 1:
        why = "smallest adequate type"
    elif position == 0:
        why = "only type the model fits in the pool"
    else:
        why = "smallest adequate type with room"
    notes += [o.shortfall for o in no_room]
    later = [o for o in ranked[position + 1 :] if o.choice is None or o.plan.accelerator != winner.plan.accelerator]
    notes += [f"{o.plan.accelerator} needs {_shape(o.plan)}" for o in later[:1]]
    notes += [f"{p.accelerator} too small" for p in infeasible]
    return _with_notes(f"{_describe_choice(winner, Strategy.BINPACK)} — {why}", notes)


def _peer_nodes(pool: Pool, request: ReplicaRequest, peers: Iterable[ReplicaPlacement]) -> set[str]:
    nodes = {n.name for p in peers if p.replica != request.replica for n in p.nodes}
    nodes.update(r.node for r in pool.reservations_of(request.deployment) if r.replica != request.replica)
    return nodes


@dataclass(frozen=True)
class TypeCandidate:
    """An accelerator type a request may use, its nodes after the filters, and the request sized on it."""

    accelerator: str
    plan: Plan
    nodes: tuple[NodeState, ...]  # sorted by name
    domains: tuple[tuple[str, tuple[NodeState, ...]], ...]  # fabric domain -> nodes, sorted by domain

    @property
    def memory_claimed(self) -> float:
        """Devices per replica x device memory, GiB."""
        return self.plan.devices_per_replica * min(n.device_memory_gib for n in self.nodes)


def _sized_candidates(
    pool: Pool, view: _PoolView, candidates: Sequence[str], request: ReplicaRequest, catalog: Catalog
) -> tuple[list[tuple[_TypeView, Plan]], list[Plan]]:
    """The request sized on each candidate type: (feasible, infeasible). Memoised on the pool: the same
    model with the same sizing on the same filtered nodes always gets the same plans."""
    key = (
        "sized",
        view.key,
        model_fingerprint(request.model),
        tuple(request.sizing.__dict__.items()),  # the field values (model_dump is slow on this hot path)
        request.allow_multi_node,
        tuple(candidates),
        id(catalog),
    )

    def compute() -> tuple[list[tuple[_TypeView, Plan]], list[Plan]]:
        sizing = request.sizing.model_copy(update={"allow_multi_node": request.allow_multi_node})
        feasible: list[tuple[_TypeView, Plan]] = []
        infeasible: list[Plan] = []
        for accelerator_id in candidates:
            type_view = view.types[accelerator_id]
            try:
                accelerator = catalog.accelerator(accelerator_id)
            except UnknownIdError:
                continue
            sized = sized_plan(
                request.model, accelerator, sizing, type_view.device_memory_gib, type_view.devices_per_node
            )
            if sized.feasible:
                feasible.append((type_view, sized))
            else:
                infeasible.append(sized)
        return feasible, infeasible

    return pool.memo(key, compute)


def _allowed_types(request: ReplicaRequest, catalog: Catalog) -> list[str] | None:
    return _canonical_types(request.accelerator_types, catalog) if request.accelerator_types else None


def feasible_types(pool: Pool, request: ReplicaRequest, catalog: Catalog) -> list[TypeCandidate]:
    """The types the request may use and fits on, with their admitted nodes, in the order binpack tries them
    when nothing else decides: ``acceleratorTypes`` order, else fewest nodes per replica, then least memory.

    For callers that search the pool themselves (the rebalancer); does not change the pool.
    """
    view = _pool_view(pool, request)
    allowed = _allowed_types(request, catalog)
    candidates = [t for t in (allowed if allowed is not None else view.types) if t in view.types]
    feasible, _ = _sized_candidates(pool, view, candidates, request, catalog)
    ordered = [item for tier in _type_tiers(feasible, allowed is not None) for item in tier]
    return [TypeCandidate(v.accelerator, sized, v.nodes, v.domains) for v, sized in ordered]


def place_replica(
    pool: Pool,
    request: ReplicaRequest,
    catalog: Catalog,
    peers: Sequence[ReplicaPlacement] = (),
    demand: DemandMix | None = None,
) -> Decision:
    """Decide where one replica goes without changing the pool; the reason always says why.

    ``peers`` are the other replicas of the same deployment (the pool's own reservations of that
    deployment count too); ``spread`` keeps away from their nodes. ``demand``: the models to keep room
    for (those of the DSDs in the cluster); default every catalog model. ``binpack`` without
    ``acceleratorTypes`` takes, among the types with the fewest nodes per replica, the one whose best-fit
    placement costs least: memory claimed plus what it takes from the other models (``dspool.scarcity``).
    """
    view = _pool_view(pool, request)
    model = request.model
    label = f"{model.id} replica {request.replica}"
    allowed = _allowed_types(request, catalog)
    candidates = [t for t in (allowed if allowed is not None else view.types) if t in view.types]
    excluded_nodes = sum(view.excluded.get(t, 0) for t in (allowed if allowed is not None else view.excluded))
    missing = [t for t in allowed if t not in view.types] if allowed is not None else []
    filter_note = _filter_note(pool, request, excluded_nodes)

    if not candidates:
        if allowed is not None:
            usable = ", ".join(view.types) or "none"
            why = f"none of the allowed types ({', '.join(allowed)}) is in the pool; usable types: {usable}"
        elif pool.nodes:
            why = "no accelerator node passes the nodeSelector/taints"
        else:
            why = "the pool has no usable accelerator nodes"
        extra = f"; {filter_note}" if excluded_nodes else ""
        return Decision(placement=None, reason=f"no room for {label}: {why}{extra}")

    feasible, infeasible = _sized_candidates(pool, view, candidates, request, catalog)

    peer_nodes = _peer_nodes(pool, request, peers) if request.strategy == Strategy.SPREAD else set()
    preferred = allowed is not None
    outcomes: list[_TypeOutcome] = []
    winner: _TypeOutcome | None = None
    evaluated_tiers = 0
    least_cost = request.strategy == Strategy.BINPACK and not preferred
    if least_cost:
        winner, outcomes, ranked = _least_cost(pool, feasible, request, catalog, demand)
        tiers: list[list[tuple[_TypeView, Plan]]] = []  # every type is in `ranked`
    else:
        tiers = _type_tiers(feasible, preferred)
    for tier in tiers:
        evaluated = [
            _evaluate(type_view, sized, request.strategy, peer_nodes, free_total=len(tier) > 1)
            for type_view, sized in tier
        ]
        evaluated.sort(key=lambda o: (o.choice is None, -o.free_total, o.plan.accelerator))
        outcomes.extend(evaluated)
        evaluated_tiers += 1
        if request.strategy == Strategy.SPREAD:
            # spread looks at every type: a node free of peers on any adequate type beats sharing one
            peer_free = [o for o in evaluated if o.choice is not None and not o.choice.peers_shared]
            if peer_free:
                winner = peer_free[0]
                break
        elif evaluated[0].choice is not None:
            winner = evaluated[0]
            break
    if winner is None and request.strategy == Strategy.SPREAD:
        winner = next((o for o in outcomes if o.choice is not None), None)
    if not least_cost:
        ranked = outcomes + [_TypeOutcome(view=v, plan=p) for tier in tiers[evaluated_tiers:] for v, p in tier]

    if winner is not None:
        assert winner.choice is not None
        sized = winner.plan
        placement = placement_from_plan(sized, [n.name for n in winner.choice.nodes], request.replica)
        if least_cost:
            reason = _least_cost_reason(winner, ranked, infeasible)
        else:
            reason = _success_reason(winner, ranked, preferred, infeasible, request.strategy)
        return Decision(placement=placement, reason=reason, plan=sized)

    parts = [o.shortfall for o in outcomes]
    parts += [f"{p.accelerator}: {p.reason}" for p in infeasible]
    if missing:
        parts.append(f"not in pool or excluded: {', '.join(missing)}")
    if excluded_nodes:
        parts.append(filter_note)
    closest_plan = outcomes[0].plan if outcomes else (infeasible[0] if infeasible else None)
    return Decision(placement=None, reason=f"no room for {label}: {'; '.join(parts)}", plan=closest_plan)


# ------------------------------------------------------------------------------------------- bookkeeping


def reserve(pool: Pool, deployment: str, placement: ReplicaPlacement) -> None:
    """Book a placement's devices in the pool, all nodes or none (:meth:`Pool.reserve <dspool.inventory.Pool.reserve>`).

    Raises :class:`InsufficientDevicesError` when a node is not in the pool or has fewer free devices
    than asked, and ``ValueError`` when the replica already holds a reservation (release it first).
    """
    pool.reserve(deployment, placement)


def release(pool: Pool, deployment: str, placement: ReplicaPlacement) -> None:
    """Give back the devices a replica holds in the pool (:meth:`Pool.release <dspool.inventory.Pool.release>`).

    Nodes that left the pool are skipped; the devices released are those the pool recorded for the
    replica (never more), so releasing twice is harmless.
    """
    pool.release(deployment, placement.replica)


def place_replicas(
    pool: Pool, requests: Iterable[ReplicaRequest], catalog: Catalog, demand: DemandMix | None = None
) -> list[Decision]:
    """Place requests one after another, reserving each success; the pool is left updated."""
    decisions: list[Decision] = []
    for request in requests:
        decision = place_replica(pool, request, catalog, demand=demand)
        if decision.placement is not None:
            reserve(pool, request.deployment, decision.placement)
        decisions.append(decision)
    return decisions


# ---------------------------------------------------------------------------------- scale down and metrics


def scale_down_victims(pool: Pool, placements: Sequence[ReplicaPlacement], count: int) -> list[int]:
    """Replica indexes to remove so that the pool is least fragmented afterwards, in removal order.

    Greedy, one replica at a time, on a copy of the free counts: remove the replica whose release
    (1) empties the most nodes (whole free nodes are what big replicas need), then (2) leaves the
    largest free block on one of its nodes, then (3) frees the most devices, then (4) has the highest
    index (the usual scale-down order). The pool is not modified; call :func:`release` for each victim.
    """
    free = {name: node.free for name, node in pool.nodes.items()}
    remaining = sorted(placements, key=lambda p: p.replica)
    victims: list[int] = []
    for _ in range(max(0, min(count, len(remaining)))):

        def score(placement: ReplicaPlacement) -> tuple[int, int, int, int]:
            emptied = 0
            largest = 0
            freed = 0
            for name, devices in devices_by_node(placement).items():
                node = pool.nodes.get(name)
                if node is None:
                    continue
                after = free[name] + devices
                emptied += int(after >= node.allocatable)
                largest = max(largest, after)
                freed += devices
            return (emptied, largest, freed, placement.replica)

        victim = max(remaining, key=score)
        for name, devices in devices_by_node(victim).items():
            if name in free:
                free[name] += devices
        remaining.remove(victim)
        victims.append(victim.replica)
    return victims


def fragmentation(pool: Pool) -> dict[str, float]:
    """Per accelerator type, the share of free devices stranded on partly used nodes (0.0 to 1.0).

    A free device is usable by the largest common shape (a replica taking a whole node, TP8 on an
    8-device server) only when its node is entirely free. Fragmentation = free devices on nodes that are
    not entirely free / all free devices of the type; 0.0 when the type has no free device.
    """
    result: dict[str, float] = {}
    for accelerator, nodes in pool.by_accelerator().items():
        total = 0
        stranded = 0
        for node in nodes:
            free = node.free
            total += free
            if free < node.allocatable:
                stranded += free
        result[accelerator] = stranded / total if total else 0.0
    return result
