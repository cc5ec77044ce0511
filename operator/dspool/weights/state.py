"""What each node's model cache is known to hold: per entry, Fetching (with bytes done), Ready, Failed (with the
reason) or Missing, its size and when a replica last used it.

This is the operator's record of the cache, kept in the cluster so that it survives restarts; the files on the
node are the truth, and a fetch or an engine pod's check that disagrees with the record wins.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

MODEL_CACHE_CAPACITY_LABEL = "dspool.io/model-cache-gib"  # a node's cache capacity, when the site sets one
DEFAULT_MODEL_CACHE_DIR = "/var/lib/dspool/models"
DEFAULT_MODEL_CACHE_GIB = 2048.0  # when a node reports no capacity: room for three 671B checkpoints
ENTRY_MARKER = ".dspool-entry.json"  # written last, inside a complete and verified entry
PARTIAL_DIR = ".partial"  # where a fetch writes before the entry is renamed into place


class EntryState(StrEnum):
    """Where one entry stands on one node."""

    FETCHING = "Fetching"
    READY = "Ready"
    FAILED = "Failed"
    MISSING = "Missing"  # recorded Ready, but the node no longer has it (a replaced node, a wiped disk)


class NodeEntry(BaseModel):
    """One entry on one node."""

    entry: str = Field(description="entry id (its directory name)")
    state: EntryState
    size_bytes: int = Field(ge=0)
    bytes_done: int = Field(default=0, ge=0, description="while Fetching")
    reason: str = Field(default="", description="why it Failed or went Missing")
    last_used: datetime | None = None
    started_at: datetime | None = Field(default=None, description="when its fetch started")
    finished_at: datetime | None = Field(default=None, description="when its fetch completed")


class NodeModelCache(BaseModel):
    """One node's cache: its capacity and its entries by id."""

    node: str
    capacity_bytes: int = Field(ge=0)
    entries: dict[str, NodeEntry] = Field(default_factory=dict)

    def ready(self, entry: str) -> bool:
        """Whether the entry is complete on this node."""
        found = self.entries.get(entry)
        return found is not None and found.state == EntryState.READY

    def evictions_for(self, needed_bytes: int, keep: set[str]) -> list[str] | None:
        """The least recently used Ready entries (never used first, then by time and id), none of ``keep``
        (those in use), whose removal makes ``needed_bytes`` fit; [] when it fits already, None when even
        removing all of them would not (the one eviction rule: the operator's and the simulator's)."""
        free = self.capacity_bytes - self.used_bytes
        if free >= needed_bytes:
            return []
        candidates = sorted(
            (e for e in self.entries.values() if e.state == EntryState.READY and e.entry not in keep),
            key=lambda e: (e.last_used is not None, e.last_used or datetime.min, e.entry),
        )
        chosen: list[str] = []
        for candidate in candidates:
            chosen.append(candidate.entry)
            free += candidate.size_bytes
            if free >= needed_bytes:
                return chosen
        return None

    @property
    def used_bytes(self) -> int:
        """Bytes held or being written (Ready and Fetching entries)."""
        return sum(e.size_bytes for e in self.entries.values() if e.state in (EntryState.READY, EntryState.FETCHING))


class CacheView(BaseModel):
    """Every node's cache, as the placement engine and the simulator read it."""

    nodes: dict[str, NodeModelCache] = Field(default_factory=dict)

    def ready_on(self, node: str, entry: str) -> bool:
        """Whether ``node`` holds ``entry`` complete."""
        cache = self.nodes.get(node)
        return cache is not None and cache.ready(entry)

    def bytes_done(self, node: str, entry: str) -> int:
        """Bytes of ``entry`` already on ``node`` (its size when Ready, the progress while Fetching, else 0)."""
        cache = self.nodes.get(node)
        found = cache.entries.get(entry) if cache is not None else None
        if found is None:
            return 0
        if found.state == EntryState.READY:
            return found.size_bytes
        return found.bytes_done if found.state == EntryState.FETCHING else 0
