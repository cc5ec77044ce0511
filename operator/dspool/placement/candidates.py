"""The accelerator types a request may use, the request sized on each (:func:`dspool.sizing.plan` with the
memory the nodes report), and the order they are tried in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dspool.catalog import Catalog, ModelSpec, UnknownIdError
from dspool.inventory import NodeState
from dspool.placement.filters import PoolView, TypeView
from dspool.placement.request import ReplicaRequest
from dspool.plancache import model_fingerprint, sized_plan
from dspool.sizing import SizingPlan

COST_EPSILON_GIB = 1e-6  # costs (GiB) this close are equal: rounding, not a difference in packing
SizedKey = tuple[Any, ...]
Sized = tuple[TypeView, SizingPlan]
CostGroups = list[list[tuple[float, TypeView, SizingPlan]]]


@dataclass(frozen=True)
class TypeCandidate:
    """An accelerator type a request may use, its nodes after the filters, and the request sized on it."""

    accelerator: str
    plan: SizingPlan
    nodes: tuple[NodeState, ...]  # sorted by name
    domains: tuple[tuple[str, tuple[NodeState, ...]], ...]  # fabric domain -> nodes, sorted by domain

    @property
    def memory_claimed(self) -> float:
        """Devices per replica x device memory, GiB."""
        return self.plan.devices_per_replica * min(n.device_memory_gib for n in self.nodes)


@dataclass
class SizedTypes:
    """The request sized on each candidate type: the types it fits (feasible) and those it does not."""

    feasible: list[Sized]
    infeasible: list[SizingPlan]
    _cost_groups: CostGroups | None = field(default=None, repr=False)

    def cost_groups(self) -> CostGroups:
        """The feasible types grouped by nodes per replica (fewest first), each group by memory claimed,
        then id: the order least-cost binpack tries them in (computed once)."""
        if self._cost_groups is None:
            groups: dict[int, list[tuple[float, TypeView, SizingPlan]]] = {}
            claimed = [(memory_claimed(item), *item) for item in self.feasible]
            for memory, view, sized in sorted(claimed, key=lambda i: (i[2].nodes_per_replica, i[0], i[2].accelerator)):
                groups.setdefault(sized.nodes_per_replica, []).append((memory, view, sized))
            self._cost_groups = list(groups.values())
        return self._cost_groups


def memory_claimed(item: Sized) -> float:
    """Devices per replica x the type's device memory, GiB (rounded, so equal types compare equal)."""
    type_view, sized = item
    return round(sized.devices_per_replica * type_view.device_memory_gib, 3)


def canonical_types(requested: Sequence[str], catalog: Catalog) -> list[str]:
    """The requested accelerator ids as catalog ids (aliases resolved), duplicates dropped, order kept."""
    result: list[str] = []
    for wanted in requested:
        try:
            canonical = catalog.accelerator(wanted).id
        except UnknownIdError:
            canonical = wanted
        if canonical not in result:
            result.append(canonical)
    return result


def allowed_types(request: ReplicaRequest, catalog: Catalog) -> list[str] | None:
    """The request's ``acceleratorTypes`` in preference order, or None when any type will do."""
    return canonical_types(request.accelerator_types, catalog) if request.accelerator_types else None


def candidate_types(view: PoolView, allowed: list[str] | None) -> list[str]:
    """The allowed types that have at least one admitted node."""
    return [t for t in (allowed if allowed is not None else view.types) if t in view.types]


# id of a (frozen) catalog model -> (the model, its fingerprint); the model is kept so that its id is not reused
_FINGERPRINTS: dict[int, tuple[ModelSpec, tuple[Any, ...]]] = {}
FINGERPRINT_LIMIT = 256


def _fingerprint(model: ModelSpec) -> tuple[Any, ...]:
    """:func:`model_fingerprint`, computed once per model object (a request's model is the catalog's)."""
    found = _FINGERPRINTS.get(id(model))
    if found is not None and found[0] is model:
        return found[1]
    if len(_FINGERPRINTS) >= FINGERPRINT_LIMIT:
        _FINGERPRINTS.clear()
    fingerprint = model_fingerprint(model)
    _FINGERPRINTS[id(model)] = (model, fingerprint)
    return fingerprint


def sized_key(view: PoolView, candidates: Sequence[str], request: ReplicaRequest, catalog: Catalog) -> SizedKey:
    """What decides :func:`size_types`' answer: the same model, sizing and filtered nodes get the same plans."""
    return (
        view.key,
        _fingerprint(request.model),
        tuple(request.sizing.__dict__.items()),  # the field values (model_dump is slow on this hot path)
        request.allow_multi_node,
        tuple(candidates),
        id(catalog),
    )


def size_types(view: PoolView, candidates: Sequence[str], request: ReplicaRequest, catalog: Catalog) -> SizedTypes:
    """The request sized on each candidate type (the placement context keeps the answer per :func:`sized_key`)."""
    sizing = request.sizing.model_copy(update={"allow_multi_node": request.allow_multi_node})
    feasible: list[Sized] = []
    infeasible: list[SizingPlan] = []
    for accelerator_id in candidates:
        type_view = view.types[accelerator_id]
        try:
            accelerator = catalog.accelerator(accelerator_id)
        except UnknownIdError:
            continue
        sized = sized_plan(request.model, accelerator, sizing, type_view.device_memory_gib, type_view.devices_per_node)
        if sized.feasible:
            feasible.append((type_view, sized))
        else:
            infeasible.append(sized)
    return SizedTypes(feasible, infeasible)


def type_tiers(feasible: list[Sized], preferred: bool) -> list[list[Sized]]:
    """Feasible types in the order binpack tries them, grouped into ties (ranked by most free devices).

    With an explicit ``acceleratorTypes`` list each type is its own tier, in the user's order. Otherwise
    the fewest nodes per replica first (single-node before multi-node: NVLink beats the network, and a
    2-node gang beats a 5-node one), then the least device memory claimed per replica.
    """
    if preferred:
        return [[item] for item in feasible]

    def rank(item: Sized) -> tuple[int, float]:
        type_view, sized = item
        return (sized.nodes_per_replica, round(sized.devices_per_replica * type_view.device_memory_gib, 3))

    tiers: list[list[Sized]] = []
    for item in sorted(feasible, key=lambda i: (*rank(i), i[1].accelerator)):
        if tiers and rank(tiers[-1][0]) == rank(item):
            tiers[-1].append(item)
        else:
            tiers.append([item])
    return tiers
