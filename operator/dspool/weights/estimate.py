"""How long a replica waits for its weights on a node or a gang of nodes: fetch, then load. Pure.

- **Fetch**: the bytes of the entry a node lacks, at the bandwidth left for it: the origin's per-node rate,
  or the pool-wide origin cap shared by every fetch in flight, whichever is lower. A gang's nodes fetch in
  parallel (each its own copy of the entry), so they share the pool-wide cap with each other too.
- **Load**: the entry read from the node's local disk into the engine (entry size / disk bandwidth).

A replica is ready when its slowest node is. The figures are estimates for choosing between candidates
and sizing timeouts, not promises: the simulator (:mod:`dspool.sim.simulate`) plays the same bandwidths
over time, with fetches starting and finishing.

Default bandwidths (sources in docs/weights.md): the origin at 200 MB/s per node and 1 GB/s for
the whole pool, local NVMe at 2 GB/s, the figures issue 20 states; each is a conservative reading of what
vendors publish (one S3 connection, a single NVMe drive's sequential read).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from dspool.catalog import ModelSpec, Precision
from dspool.sizing import weights_total_gib
from dspool.weights.entries import CacheEntry
from dspool.weights.state import CacheView, EntryState

BITS_PER_BYTE = 8
GIGA = 1e9
DEFAULT_ORIGIN_GBPS = 1.6  # 200 MB/s per node
DEFAULT_ORIGIN_TOTAL_GBPS = 8.0  # 1 GB/s for the whole pool
DEFAULT_DISK_GBPS = 16.0  # 2 GB/s: one data-center NVMe drive, sequential read


class Bandwidth(BaseModel):
    """The rates weights move at, in gigabits per second (as network links are quoted)."""

    model_config = ConfigDict(frozen=True)

    origin_gbps: float = Field(default=DEFAULT_ORIGIN_GBPS, gt=0, description="origin -> one node")
    origin_total_gbps: float = Field(
        default=DEFAULT_ORIGIN_TOTAL_GBPS, gt=0, description="origin -> the whole pool, shared by every fetch"
    )
    disk_gbps: float = Field(default=DEFAULT_DISK_GBPS, gt=0, description="a node's local disk -> the engine")

    @property
    def origin_bytes_per_second(self) -> float:
        """Per node, bytes per second."""
        return self.origin_gbps * GIGA / BITS_PER_BYTE

    @property
    def origin_total_bytes_per_second(self) -> float:
        """Pool-wide, bytes per second."""
        return self.origin_total_gbps * GIGA / BITS_PER_BYTE

    @property
    def disk_bytes_per_second(self) -> float:
        """Local load, bytes per second."""
        return self.disk_gbps * GIGA / BITS_PER_BYTE


def fetch_rate(bandwidth: Bandwidth, fetches_sharing: int) -> float:
    """Bytes per second one fetch gets while ``fetches_sharing`` fetches (itself included) share the origin."""
    share = bandwidth.origin_total_bytes_per_second / max(1, fetches_sharing)
    return min(bandwidth.origin_bytes_per_second, share)


def load_seconds(size_bytes: int, bandwidth: Bandwidth) -> float:
    """Seconds to read an entry from the local disk into the engine."""
    return size_bytes / bandwidth.disk_bytes_per_second


@dataclass(frozen=True)
class NodeWait:
    """What one node of a candidate waits for: the bytes it still lacks, their fetch, then the load."""

    node: str
    missing_bytes: int
    fetch_seconds: float
    load_seconds: float

    @property
    def seconds(self) -> float:
        """Until this node's stage can serve."""
        return self.fetch_seconds + self.load_seconds

    @property
    def cached(self) -> bool:
        """Whether the node holds the whole entry already."""
        return self.missing_bytes == 0


@dataclass(frozen=True)
class ReadyEstimate:
    """A candidate's time-to-ready: one :class:`NodeWait` per node; ready when the slowest node is."""

    nodes: tuple[NodeWait, ...]

    @property
    def seconds(self) -> float:
        """Until the replica can serve."""
        return max((n.seconds for n in self.nodes), default=0.0)

    @property
    def missing_bytes(self) -> int:
        """Bytes fetched from the origin, over every node."""
        return sum(n.missing_bytes for n in self.nodes)

    @property
    def cached(self) -> bool:
        """Whether every node holds the entry."""
        return all(n.cached for n in self.nodes)


def entry_in_precision(entry: CacheEntry, model: ModelSpec, precision: Precision) -> CacheEntry:
    """The same checkpoint source in the precision a plan serves (the request's entry is the spec's; a type
    whose plan runs another precision serves another entry: same source and revision, its own size)."""
    if entry.precision == precision:
        return entry
    size = round(weights_total_gib(model, precision), 1)
    return entry.model_copy(update={"precision": precision, "size_gib": size})


def fetches_in_flight(cache: CacheView) -> int:
    """Entries being fetched anywhere in the pool (each shares the origin's pool-wide bandwidth)."""
    return sum(
        1 for node in cache.nodes.values() for entry in node.entries.values() if entry.state == EntryState.FETCHING
    )


def time_to_ready(
    entry: str,
    size_bytes: int,
    nodes: Iterable[str],
    cache: CacheView,
    bandwidth: Bandwidth,
    in_flight: int = 0,
) -> ReadyEstimate:
    """How long a replica of ``entry`` waits on these nodes: per node, the missing bytes at the bandwidth left
    (``in_flight`` other fetches share the pool-wide cap, and so do this candidate's own new fetches),
    then the load from local disk."""
    names = list(nodes)
    missing = [(name, max(0, size_bytes - cache.bytes_done(name, entry))) for name in names]
    new_fetches = sum(
        1 for name, lacking in missing if lacking and not _fetching(cache, name, entry)
    )  # a node already fetching it is one of ``in_flight``
    rate = fetch_rate(bandwidth, in_flight + new_fetches)
    load = load_seconds(size_bytes, bandwidth)
    return ReadyEstimate(tuple(NodeWait(name, lacking, lacking / rate, load) for name, lacking in missing))


def _fetching(cache: CacheView, node: str, entry: str) -> bool:
    found = cache.nodes.get(node)
    state = found.entries.get(entry) if found is not None else None
    return state is not None and state.state == EntryState.FETCHING
