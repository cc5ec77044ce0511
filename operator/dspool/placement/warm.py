"""Prefetch: the nodes where a DSD's weights are kept warm beyond those its replicas use (``spec.weights.warmNodes``).

On the accelerator type its first replica runs on, the nodes the DSD may use (its nodeSelector and tolerations),
that its replicas do not use, holding or fetching the entry first (they already count), then the roomiest (the
likeliest home of a scale-out or a move), by name on ties."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dspool.api import DeepSeekDeploymentSpec, ReplicaPlacement
from dspool.catalog import Catalog, Precision
from dspool.inventory import Pool
from dspool.placement.filters import node_admits
from dspool.weights.entries import entry_for
from dspool.weights.jobs import WantedEntry
from dspool.weights.state import CacheView, EntryState
from dspool.weights.wanted import cached_deployments


def warm_nodes(
    pool: Pool,
    spec: DeepSeekDeploymentSpec,
    placements: Sequence[ReplicaPlacement],
    entry: str,
    cache: CacheView,
) -> list[str]:
    """Up to ``spec.weights.warmNodes`` nodes to keep ``entry`` on besides the placements' own (none without
    a placement: the type is not known yet)."""
    count = spec.weights.warm_nodes if spec.weights is not None else 0
    if not count or not placements:
        return []
    accelerator = placements[0].accelerator
    used = {n.name for p in placements for n in p.nodes}
    candidates = [
        node
        for node in pool.by_accelerator().get(accelerator, [])
        if node.name not in used and node_admits(node, spec.placement.node_selector, spec.placement.tolerations)
    ]

    def holds(name: str) -> bool:
        record = cache.nodes.get(name)
        found = record.entries.get(entry) if record is not None else None
        return found is not None and found.state in (EntryState.READY, EntryState.FETCHING)

    ranked = sorted(candidates, key=lambda n: (not holds(n.name), -n.free, n.name))
    return [node.name for node in ranked[:count]]


def prefetch_entries(
    pool: Pool,
    deployments: Iterable[tuple[str, Mapping[str, Any], Sequence[ReplicaPlacement]]],
    catalog: Catalog,
    cache: CacheView,
) -> list[WantedEntry]:
    """(namespace, spec, placements) of every DSD, oldest first -> the entries to keep warm on more nodes
    (``spec.weights.warmNodes``), in the first placement's precision on its accelerator type."""
    wanted: list[WantedEntry] = []
    for deployment in cached_deployments(deployments, catalog):
        spec, placements = deployment.spec, deployment.placements
        if spec.weights is None or not spec.weights.warm_nodes or not placements:
            continue
        entry = entry_for(spec, deployment.model, Precision(placements[0].precision))
        if entry is None:
            continue
        wanted += [deployment.wanted(entry, node) for node in warm_nodes(pool, spec, placements, entry.id, cache)]
    return wanted
