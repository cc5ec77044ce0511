"""The free index: each accelerator type's nodes bucketed by free devices, so best fit is found without a scan.

Owned by a :class:`~dspool.inventory.pool.Pool`, which tells it of every change of a node's counts
(:meth:`FreeIndex.moved`); nothing else changes the counts of a pool's nodes.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar


class IndexedNode(Protocol):
    """What the index reads of a node (the pool's NodeState)."""

    @property
    def name(self) -> str: ...

    @property
    def accelerator(self) -> str: ...

    @property
    def allocatable(self) -> int: ...

    @property
    def free(self) -> int: ...

    @property
    def fabric_domain(self) -> str: ...


NodeState = TypeVar("NodeState", bound=IndexedNode)


class FreeIndex(Generic[NodeState]):
    """The nodes of each accelerator type bucketed by free devices, so best fit is found without a scan.

    Exact as long as its pool reports every change of a node's counts (:meth:`moved`): the pool's booking
    methods do, and :meth:`~dspool.inventory.pool.Pool.check_invariant` says when they did not. Within a
    bucket, nodes are sorted by name, so a lookup returns what a scan in name order would.
    """

    def __init__(self, groups: Mapping[str, list[NodeState]]) -> None:
        self._nodes: dict[str, NodeState] = {}
        self._free: dict[str, int] = {}
        self._buckets: dict[str, list[list[str]]] = {}  # accelerator -> [free] -> sorted node names
        self._totals: dict[str, int] = {}
        # the same per fabric domain of a type, so a gang's nodes are found without a scan of the fabric
        self._domain_buckets: dict[tuple[str, str], list[list[str]]] = {}
        self._domain_totals: dict[tuple[str, str], int] = {}
        # per type, how many times a node's free count changed: what placement computed from the type's
        # counts holds while this stays the same (see :meth:`version`)
        self._versions: dict[str, int] = {}
        for accelerator, nodes in groups.items():
            buckets: list[list[str]] = [[] for _ in range(max(n.allocatable for n in nodes) + 1)]
            total = 0
            for node in nodes:  # sorted by name
                free = node.free
                self._nodes[node.name] = node
                self._free[node.name] = free
                self._grow(buckets, free)[free].append(node.name)
                total += free
                domain = (accelerator, node.fabric_domain)
                self._grow(self._domain_buckets.setdefault(domain, []), free)[free].append(node.name)
                self._domain_totals[domain] = self._domain_totals.get(domain, 0) + free
            self._buckets[accelerator] = buckets
            self._totals[accelerator] = total
            self._versions[accelerator] = 0

    @staticmethod
    def _grow(buckets: list[list[str]], free: int) -> list[list[str]]:
        while len(buckets) <= free:
            buckets.append([])
        return buckets

    def moved(self, node: NodeState) -> None:
        """Re-bucket ``node`` after its counts changed (ignored for nodes this index does not hold)."""
        name = node.name
        if self._nodes.get(name) is not node:
            return
        old = self._free[name]
        new = node.free
        if new == old:
            return
        accelerator = node.accelerator
        domain = (accelerator, node.fabric_domain)
        for buckets in (self._buckets[accelerator], self._domain_buckets[domain]):
            bucket = buckets[old]
            del bucket[bisect_left(bucket, name)]
            if new >= len(buckets):
                self._grow(buckets, new)
            insort(buckets[new], name)
        self._free[name] = new
        self._totals[accelerator] += new - old
        self._domain_totals[domain] += new - old
        self._versions[accelerator] += 1

    def version(self, accelerator: str) -> int:
        """A number that changes whenever the free count of one of the type's nodes does (-1 for a type the
        index does not hold): anything computed from the type's free counts holds while it stays the same."""
        return self._versions.get(accelerator, -1)

    def best_fit(self, accelerator: str, need: int) -> NodeState | None:
        """The node of the type with the fewest free devices that are still >= ``need`` (first by name)."""
        buckets = self._buckets.get(accelerator, [])
        for free in range(max(need, 0), len(buckets)):
            if buckets[free]:
                return self._nodes[buckets[free][0]]
        return None

    def roomiest(self, accelerator: str) -> NodeState | None:
        """The node of the type with the most free devices (first by name)."""
        for bucket in reversed(self._buckets.get(accelerator, [])):
            if bucket:
                return self._nodes[bucket[0]]
        return None

    def free_of(self, name: str) -> int | None:
        """The free devices the index has on record for a node (None for a node it does not hold)."""
        return self._free.get(name)

    def free_total(self, accelerator: str) -> int:
        """Free devices over all nodes of the type."""
        return self._totals.get(accelerator, 0)

    def domain_free(self, accelerator: str, domain: str) -> int:
        """Free devices over the type's nodes in one fabric domain."""
        return self._domain_totals.get((accelerator, domain), 0)

    def domain_fitting(self, accelerator: str, domain: str, need: int) -> int:
        """How many of the type's nodes in one fabric domain have at least ``need`` free."""
        buckets = self._domain_buckets.get((accelerator, domain), [])
        return sum(len(bucket) for bucket in buckets[max(need, 0) :])

    def domain_best_fits(self, accelerator: str, domain: str, need: int, count: int) -> list[tuple[int, NodeState]]:
        """Up to ``count`` (free, node) of the type in one fabric domain with at least ``need`` free, fewest
        free first, then by name: what sorting a scan of the domain by (free, name) would return."""
        picked: list[tuple[int, NodeState]] = []
        buckets = self._domain_buckets.get((accelerator, domain), [])
        for free in range(max(need, 0), len(buckets)):
            for name in buckets[free]:
                picked.append((free, self._nodes[name]))
                if len(picked) == count:
                    return picked
        return picked

    def best_gang(
        self, accelerator: str, domains: Iterable[str], need: int, count: int
    ) -> tuple[str, list[tuple[int, NodeState]]] | None:
        """Binpack's gang of ``count`` nodes with ``need`` free each in one fabric domain of the type: in each
        domain the best-fitting nodes (:meth:`domain_best_fits`), and the domain whose picks leave the fewest
        devices over, then with the fewest free devices in all, then the first of ``domains``. None when no
        domain has ``count`` such nodes. What a loop over :meth:`domain_best_fits` finds, without building a
        list per domain."""
        need = max(need, 0)
        best: tuple[int, int] | None = None
        best_domain = ""
        for domain in domains:
            buckets = self._domain_buckets.get((accelerator, domain))
            if buckets is None or sum(len(bucket) for bucket in buckets[need:]) < count:
                continue
            left, free = count, need
            taken = 0
            while left:  # the count best fits: the fullest buckets first, as many names as each holds
                took = min(left, len(buckets[free]))
                taken += took * free
                left -= took
                free += 1
            key = (taken - count * need, self._domain_totals[(accelerator, domain)])
            if best is None or key < best:
                best, best_domain = key, domain
        if best is None:
            return None
        return best_domain, self.domain_best_fits(accelerator, best_domain, need, count)

    def domain_roomiest(self, accelerator: str, domain: str, count: int) -> list[tuple[int, NodeState]]:
        """Up to ``count`` (free, node) of the type in one fabric domain with the most free devices, then by
        name: what sorting the domain's nodes by (most free, name) would return."""
        picked: list[tuple[int, NodeState]] = []
        buckets = self._domain_buckets.get((accelerator, domain), [])
        for free in range(len(buckets) - 1, -1, -1):
            for name in buckets[free]:
                picked.append((free, self._nodes[name]))
                if len(picked) == count:
                    return picked
        return picked
