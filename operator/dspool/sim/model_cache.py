"""The node model caches of ``dspool simulate``: fetches that take time, entries kept and evicted, replicas
Ready only once their weights are on every node and loaded.

The caches are the operator's own :class:`~dspool.weights.state.CacheView` (the placement engine reads this
very object), changed here as the simulated clock moves:

- a replica placed on a node that holds its entry only loads it (entry size / disk bandwidth); on a node
  fetching it, it waits for that fetch; elsewhere a fetch starts. Ready = the last of its nodes' fetches
  done, plus the load;
- fetches share the origin as fluids: each gets the per-node rate, divided among the fetches on its node,
  or its share of the pool-wide cap, whichever is lower; background fetches (prefetch) only get what the
  replicas' fetches leave;
- with the cache on, a finished fetch stays as a Ready entry; making room evicts the least recently used
  entries that no placed replica uses (never one in use; a node without room fetches without keeping).
  With the cache off (today's behaviour), every replica fetches its own copy and nothing is kept.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dspool.weights.entries import CacheEntry
from dspool.weights.estimate import Bandwidth, load_seconds
from dspool.weights.state import CacheView, EntryState, NodeEntry, NodeModelCache

DONE_BYTES = 1.0  # a fetch with less than a byte left is done (floating point)


@dataclass
class _Fetch:
    node: str
    entry: CacheEntry
    remaining: float
    keep: bool  # written into the cache (an entry); else the replica's own copy
    background: bool  # prefetch: gets the bandwidth the replicas' fetches leave
    waiters: set[str] = field(default_factory=set)
    rate: float = 0.0


@dataclass
class _Pending:
    model: str
    placed_at: float
    load: float
    fetches: set[int]
    counted: bool  # a new replica (its time-to-ready is reported), not a move's new copy


@dataclass
class WeightsStats:
    """What the caches measured: time-to-ready per model, bytes from the origin, hits."""

    time_to_ready: dict[str, list[float]] = field(default_factory=dict)
    never_ready: dict[str, int] = field(default_factory=dict)  # replicas that left before their weights were in
    origin_bytes: float = 0.0
    node_placements: int = 0  # (replica, node) pairs placed
    node_hits: int = 0  # of which the node held the entry Ready


class ModelCaches:
    """Every node's cache and the fetches in flight, on the simulated clock (see the module docstring)."""

    def __init__(self, capacities: dict[str, int], bandwidth: Bandwidth, keep: bool) -> None:
        """``capacities``: node -> cache bytes; ``keep``: the cache is on (entries are kept)."""
        self.view = CacheView(nodes={n: NodeModelCache(node=n, capacity_bytes=c) for n, c in capacities.items()})
        self.bandwidth = bandwidth
        self.keep = keep
        self.fetches: dict[int, _Fetch] = {}
        self.pending: dict[str, _Pending] = {}
        self.ready_at: dict[str, float] = {}
        self.in_use: dict[tuple[str, str], int] = {}  # (node, entry id) -> placed replicas using it
        self.stats = WeightsStats()
        self.now = 0.0
        self._ids = itertools.count()

    # --------------------------------------------------------------------------------------- replicas

    def place(self, key: str, entry: CacheEntry, nodes: list[str], now: float, counted: bool) -> None:
        """A replica (``key``) was placed on ``nodes``: it waits for the fetches it needs, then loads."""
        self.advance(now)
        waiting: set[int] = set()
        for node in nodes:
            self.stats.node_placements += 1
            self.in_use[(node, entry.id)] = self.in_use.get((node, entry.id), 0) + 1
            cache = self.view.nodes[node]
            held = cache.entries.get(entry.id)
            if self.keep and held is not None and held.state == EntryState.READY:
                self.stats.node_hits += 1
                held.last_used = _stamp(now)
                continue
            fetch_id = self._shared_fetch(node, entry.id) if self.keep else None
            if fetch_id is None:
                fetch_id = self._start(node, entry, now, background=False)
            self.fetches[fetch_id].waiters.add(key)
            self.fetches[fetch_id].background = False  # a replica waits for it now
            waiting.add(fetch_id)
        load = load_seconds(entry.size_bytes, self.bandwidth)
        self.pending[key] = _Pending(entry.model, now, load, waiting, counted)
        if not waiting:
            self._ready(key, now)
        self._rates()

    def release(self, key: str, entry: CacheEntry, nodes: list[str], now: float) -> None:
        """A replica left ``nodes``: its entries are no longer in use by it; its own copies (cache off) go."""
        self.advance(now)
        left = self.pending.pop(key, None)
        if left is not None and left.counted:
            self.stats.never_ready[left.model] = self.stats.never_ready.get(left.model, 0) + 1
        self.ready_at.pop(key, None)
        for node in nodes:
            count = self.in_use.get((node, entry.id), 0) - 1
            if count > 0:
                self.in_use[(node, entry.id)] = count
            else:
                self.in_use.pop((node, entry.id), None)
            held = self.view.nodes[node].entries.get(entry.id)
            if held is not None:
                held.last_used = _stamp(now)
        for fetch_id, fetch in list(self.fetches.items()):
            fetch.waiters.discard(key)
            if not fetch.waiters and not fetch.keep:
                del self.fetches[fetch_id]  # the replica's own copy, deleted with its pods
        self._rates()

    def ready(self, key: str, now: float) -> bool:
        """Whether the replica's weights are fetched and loaded by ``now``."""
        at = self.ready_at.get(key)
        return at is not None and now >= at

    def _ready(self, key: str, fetched_at: float) -> None:
        pending = self.pending.pop(key)
        at = fetched_at + pending.load
        self.ready_at[key] = at
        if pending.counted:
            self.stats.time_to_ready.setdefault(pending.model, []).append(at - pending.placed_at)

    # --------------------------------------------------------------------------------------- prefetch

    def prefetch(self, entry: CacheEntry, node: str, now: float) -> bool:
        """Fetch ``entry`` to ``node`` in the background (cache on); False when the node has no room."""
        self.advance(now)
        if not self.keep or self.holds(node, entry.id) or not self._make_room(node, entry.size_bytes):
            return False
        self._start(node, entry, now, background=True)
        self._rates()
        return True

    def holds(self, node: str, entry: str) -> bool:
        """Whether the node's cache has the entry Ready or being fetched."""
        held = self.view.nodes[node].entries.get(entry)
        return held is not None and held.state in (EntryState.READY, EntryState.FETCHING)

    # --------------------------------------------------------------------------------------- fetches

    def _shared_fetch(self, node: str, entry: str) -> int | None:
        return next((i for i, f in self.fetches.items() if f.node == node and f.entry.id == entry and f.keep), None)

    def _start(self, node: str, entry: CacheEntry, now: float, background: bool) -> int:
        keep = self.keep and self._make_room(node, entry.size_bytes)
        fetch_id = next(self._ids)
        self.fetches[fetch_id] = _Fetch(node, entry, float(entry.size_bytes), keep, background)
        if keep:
            self.view.nodes[node].entries[entry.id] = NodeEntry(
                entry=entry.id, state=EntryState.FETCHING, size_bytes=entry.size_bytes, last_used=_stamp(now)
            )
        return fetch_id

    def _make_room(self, node: str, size: int) -> bool:
        """Evict least recently used entries no replica uses until ``size`` more bytes fit; False if they cannot."""
        cache = self.view.nodes[node]
        used = {entry for (where, entry) in self.in_use if where == node}
        evict = cache.evictions_for(size, used)
        if evict is None:
            return False
        for entry in evict:
            del cache.entries[entry]
        return True

    def _rates(self) -> None:
        """Share the origin: replicas' fetches first, background fetches get what is left."""
        per_node: dict[str, int] = {}
        for fetch in self.fetches.values():
            per_node[fetch.node] = per_node.get(fetch.node, 0) + 1
        node_rate = self.bandwidth.origin_bytes_per_second
        total = self.bandwidth.origin_total_bytes_per_second
        demand = [f for f in self.fetches.values() if not f.background]
        for fetch in demand:
            fetch.rate = min(node_rate / per_node[fetch.node], total / len(demand))
        left = max(0.0, total - sum(f.rate for f in demand))
        background = [f for f in self.fetches.values() if f.background]
        for fetch in background:
            fetch.rate = min(node_rate / per_node[fetch.node], left / len(background))

    def advance(self, now: float) -> None:
        """Move every fetch on to ``now`` (no fetch may finish before it: see :meth:`next_completion`)."""
        elapsed = now - self.now
        if elapsed > 0:
            for fetch in self.fetches.values():
                moved = min(fetch.remaining, fetch.rate * elapsed)
                fetch.remaining -= moved
                self.stats.origin_bytes += moved
                if fetch.keep:
                    held = self.view.nodes[fetch.node].entries[fetch.entry.id]
                    held.bytes_done = int(held.size_bytes - fetch.remaining)
        self.now = max(self.now, now)

    def next_completion(self) -> float:
        """When the next fetch finishes at the current rates (infinity when none can)."""
        times = [self.now + f.remaining / f.rate for f in self.fetches.values() if f.rate > 0]
        return min(times, default=math.inf)

    def complete_next(self) -> list[tuple[str, float]]:
        """Finish the fetches due next; returns the replicas that became Ready, with when."""
        at = self.next_completion()
        self.advance(at)
        ready: list[tuple[str, float]] = []
        for fetch_id, fetch in list(self.fetches.items()):
            if fetch.remaining >= DONE_BYTES:
                continue
            self.stats.origin_bytes += fetch.remaining
            del self.fetches[fetch_id]
            if fetch.keep:
                held = self.view.nodes[fetch.node].entries[fetch.entry.id]
                held.state, held.bytes_done = EntryState.READY, held.size_bytes
            for key in fetch.waiters:
                pending = self.pending.get(key)
                if pending is None:
                    continue
                pending.fetches.discard(fetch_id)
                if not pending.fetches:
                    self._ready(key, at)
                    ready.append((key, self.ready_at[key]))
        self._rates()
        return ready

    @property
    def busy(self) -> bool:
        """Whether any fetch is in flight."""
        return bool(self.fetches)


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
