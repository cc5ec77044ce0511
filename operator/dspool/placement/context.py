"""What the placement engine derives from a pool's node set, kept with the pool until the set changes.

The same filters see the same nodes, the same model sized on the same nodes gets the same plans, and the demand
mix's scarce shapes depend only on the nodes: a pass asks each of these questions thousands of times, so the
answers are kept here, each in its own typed table. The context listens to its pool
(:meth:`Pool.listen <dspool.inventory.pool.Pool.listen>`) and forgets everything when a node is added, removed
or replaced. Device counts change all the time and are never cached here (the pool's free index follows them).
"""

from __future__ import annotations

from collections.abc import Sequence

from dspool.catalog import Catalog
from dspool.inventory import FreeIndex, NodeState, Pool
from dspool.placement.candidates import SizedKey, SizedTypes, size_types, sized_key
from dspool.placement.choice import Choice, Shortfall
from dspool.placement.filters import FilterKey, PoolView, TypeView, filter_key, node_admits, pool_view
from dspool.placement.request import DemandMix, ReplicaRequest
from dspool.placement.scarcity import Loss, MixShapes, mix_shapes

# a type's best-fit choice and its loss to the demand mix, or why it has no room
Evaluated = tuple[Choice | None, Shortfall | None, Loss | None]
OutcomeTable = dict[tuple[str, int, int, str | None], tuple[TypeView, int, Evaluated]]


class KnownOutcomes:
    """What least-cost binpack found on each type (:data:`Evaluated`), kept while the type's free counts stay
    the same: a placement changes one type, and the next decision finds the others as they were.

    One table per free index and demand mix (a rebuilt index or another mix starts a new one); an entry holds
    while the type's :meth:`FreeIndex.version <dspool.inventory.FreeIndex.version>` is the one it was found
    at, so a count changed through the pool or a trial undone makes it stale.
    """

    def __init__(self) -> None:
        self._index: FreeIndex[NodeState] | None = None
        self._shapes: MixShapes | None = None
        self._known: OutcomeTable = {}

    def table(self, index: FreeIndex[NodeState], shapes: MixShapes) -> OutcomeTable:
        """The outcomes found with this index and mix: (accelerator, stages, devices per stage, the requesting
        model when it has a shape on the type) -> (the type's view, its version then, the outcome)."""
        if index is not self._index or shapes is not self._shapes:
            self._index, self._shapes, self._known = index, shapes, {}
        return self._known

    def clear(self) -> None:
        """Forget everything (the node set changed)."""
        self._index, self._shapes, self._known = None, None, {}


class PlacementContext:
    """The placement engine's tables for one pool (see the module docstring); one per pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.views: dict[FilterKey, PoolView] = {}
        self.sized: dict[SizedKey, SizedTypes] = {}
        self.shapes: dict[tuple[object, ...], MixShapes] = {}
        self.admitted: dict[str, list[NodeState]] | None = None
        self.outcomes = KnownOutcomes()

    @classmethod
    def of(cls, pool: Pool) -> PlacementContext:
        """The pool's context, created (and listening to the pool) on first use."""
        context = pool.listener(cls)
        if context is None:
            context = cls(pool)
            pool.listen(context)
        return context

    def nodes_changed(self) -> None:
        """The node set changed: everything here was derived from it."""
        self.views.clear()
        self.sized.clear()
        self.shapes.clear()
        self.admitted = None
        self.outcomes.clear()

    def view(self, request: ReplicaRequest) -> PoolView:
        """The nodes of each type that pass the request's filters."""
        key = filter_key(request)
        found = self.views.get(key)
        if found is None:
            found = self.views[key] = pool_view(self.pool, request)
        return found

    def sized_types(
        self, view: PoolView, candidates: Sequence[str], request: ReplicaRequest, catalog: Catalog
    ) -> SizedTypes:
        """The request sized on each candidate type of the view."""
        key = sized_key(view, candidates, request, catalog)
        found = self.sized.get(key)
        if found is None:
            found = self.sized[key] = size_types(view, candidates, request, catalog)
        return found

    def mix_shapes(self, demand: DemandMix, catalog: Catalog) -> MixShapes:
        """The demand mix's whole-node shapes on the pool's types."""
        found = self.shapes.get(demand.key)
        if found is None:
            found = self.shapes[demand.key] = mix_shapes(self.pool, demand, catalog)
        return found

    def admitted_by_type(self) -> dict[str, list[NodeState]]:
        """Per type, the nodes a request without nodeSelector or tolerations may use (capacity metrics)."""
        if self.admitted is None:
            self.admitted = {
                accelerator: admitted
                for accelerator, nodes in self.pool.by_accelerator().items()
                if (admitted := [n for n in nodes if node_admits(n, {}, [])])
            }
        return self.admitted
