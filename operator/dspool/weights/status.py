"""What a DeepSeekDeployment's status says of its weights: the ``WeightsReady`` condition."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from dspool.api import Condition, DeepSeekDeploymentSpec, ReplicaPlacement
from dspool.catalog import ModelSpec, Precision
from dspool.weights.entries import GIB, entry_for
from dspool.weights.estimate import Bandwidth, fetch_rate, fetches_in_flight
from dspool.weights.state import CacheView, EntryState

MAX_NODES_LISTED = 3


def _on_node(view: CacheView, entry: str, size_bytes: int, node: str, now: datetime | None) -> str | None:
    """Why ``node`` is not ready yet ('fetching 641 GiB on h200-001 for 12 min, ~57 min expected'), or None
    when it holds the entry."""
    cache = view.nodes.get(node)
    record = cache.entries.get(entry) if cache is not None else None
    if record is not None and record.state == EntryState.READY:
        return None
    total = f"{size_bytes / GIB:.0f} GiB"
    if record is None:
        return f"fetch of {total} queued on {node}"
    if record.state != EntryState.FETCHING:
        return f"{record.state.value.lower()} on {node}: {record.reason}"
    expected = size_bytes / fetch_rate(Bandwidth(), fetches_in_flight(view)) / 60
    if record.started_at is None or now is None:
        return f"fetching {total} on {node}, ~{expected:.0f} min expected"
    elapsed = max(0.0, (now - record.started_at).total_seconds() / 60)
    return f"fetching {total} on {node} for {elapsed:.0f} min, ~{expected:.0f} min expected"


def weights_condition(
    spec: DeepSeekDeploymentSpec,
    model: ModelSpec,
    placements: Sequence[ReplicaPlacement],
    view: CacheView,
    now: datetime | None = None,
) -> Condition | None:
    """``WeightsReady``: True once every node of every placement holds its entry; else False with where it
    waits (None when no replica uses the node cache: weights on a PVC or hostPath, or nothing placed). A fetch
    says how long it has run and how long one takes at the default bandwidths (the fetcher's own byte count
    stays on the node: ``.progress.json``)."""
    waiting: list[str] = []
    cached = 0
    for placement in placements:
        entry = entry_for(spec, model, Precision(placement.precision))
        if entry is None:
            continue
        cached += 1
        for node in placement.nodes:
            why = _on_node(view, entry.id, entry.size_bytes, node.name, now)
            if why is not None and why not in waiting:
                waiting.append(why)
    if not cached:
        return None
    if not waiting:
        return Condition(
            type="WeightsReady", status="True", reason="Cached", message="weights cached on every node of every replica"
        )
    listed = "; ".join(waiting[:MAX_NODES_LISTED])
    more = f"; {len(waiting) - MAX_NODES_LISTED} more" if len(waiting) > MAX_NODES_LISTED else ""
    return Condition(type="WeightsReady", status="False", reason="Fetching", message=f"{listed}{more}")
