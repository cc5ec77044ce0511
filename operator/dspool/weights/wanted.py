"""Which entries the pool needs where: every placed replica's (and every move's new copy's) checkpoint on each
of its nodes, oldest DSD first (the order in which fetches are started)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dspool.api import DeepSeekDeploymentSpec, ReplicaPlacement
from dspool.catalog import Catalog, ModelSpec, Precision, UnknownIdError
from dspool.weights.entries import CacheEntry, entry_for
from dspool.weights.jobs import WantedEntry
from dspool.weights.state import MODEL_CACHE_CAPACITY_LABEL

GIB = 1024**3


@dataclass(frozen=True)
class CachedDeployment:
    """A DSD as the model cache sees it: its namespace, spec and model, what its fetches need (tolerations,
    credentials) and its placements."""

    namespace: str
    spec: DeepSeekDeploymentSpec
    model: ModelSpec
    placements: Sequence[ReplicaPlacement]

    def wanted(self, entry: CacheEntry, node: str) -> WantedEntry:
        """``entry`` on ``node`` for this DSD (its Job beside its credentials, tolerating what it tolerates)."""
        source = self.spec.model_source
        return WantedEntry(
            entry,
            node,
            self.namespace,
            tuple(t.wire() for t in self.spec.placement.tolerations),
            source.credentials_secret if source is not None else None,
        )


def cached_deployments(
    deployments: Iterable[tuple[str, Mapping[str, Any], Sequence[ReplicaPlacement]]], catalog: Catalog
) -> Iterator[CachedDeployment]:
    """(namespace, spec, placements) of every DSD -> those whose spec validates and names a known model."""
    for namespace, spec_body, placements in deployments:
        try:
            spec = DeepSeekDeploymentSpec.model_validate(spec_body)
            model = catalog.model(spec.model)
        except (ValidationError, UnknownIdError):
            continue
        yield CachedDeployment(namespace, spec, model, placements)


def wanted_entries(
    deployments: Iterable[tuple[str, Mapping[str, Any], Sequence[ReplicaPlacement]]], catalog: Catalog
) -> tuple[list[WantedEntry], dict[str, CacheEntry]]:
    """(namespace, spec, placements) of every DSD, oldest first -> the entries wanted on each node (once per
    entry and node, the first DSD's) and every entry described, by id. Specs that do not validate or name a
    model the catalog lacks want nothing."""
    wanted: list[WantedEntry] = []
    seen: set[tuple[str, str]] = set()
    known: dict[str, CacheEntry] = {}
    for deployment in cached_deployments(deployments, catalog):
        for placement in deployment.placements:
            entry = entry_for(deployment.spec, deployment.model, Precision(placement.precision))
            if entry is None:
                continue
            known.setdefault(entry.id, entry)
            for node in placement.nodes:
                if (entry.id, node.name) not in seen:
                    seen.add((entry.id, node.name))
                    wanted.append(deployment.wanted(entry, node.name))
    return wanted, known


def node_caches(nodes: Iterable[Mapping[str, Any]], default_gib: float) -> tuple[dict[str, str], dict[str, int]]:
    """(node name -> UID, node name -> cache capacity in bytes) from the node views; a node's capacity is its
    ``dspool.io/model-cache-gib`` label, else ``default_gib``."""
    uids: dict[str, str] = {}
    capacities: dict[str, int] = {}
    for node in nodes:
        metadata = node.get("metadata") or {}
        name = str(metadata.get("name", ""))
        uids[name] = str(metadata.get("uid") or "")
        label = (metadata.get("labels") or {}).get(MODEL_CACHE_CAPACITY_LABEL)
        try:
            gib = float(label) if label else default_gib
        except ValueError:
            gib = default_gib
        capacities[name] = int(max(gib, 0.0) * GIB)
    return uids, capacities
