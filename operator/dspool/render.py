"""``dspool render``: the objects dspool would create for a DeepSeekDeployment placed on a pool file.

The operator's own code end to end (sizing, placement, the workload builders, through
:func:`dspool.reconcile.reconcile`) on the pool a pool file describes, with nothing booked, so a change can be
reviewed or diffed in GitOps the way ``helm template`` output is. Pure: the caller reads the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dspool.catalog import Catalog
from dspool.inventory import Pool
from dspool.reconcile import ReconcileSettings, reconcile

RENDER_TIME = datetime(2026, 1, 1, tzinfo=UTC)  # fixed: the output of one input never changes


@dataclass(frozen=True)
class Rendered:
    """What one DSD renders to: the objects in apply order, and how its replicas were decided."""

    name: str
    objects: list[dict[str, Any]]
    phase: str
    message: str
    placed: int
    desired: int
    reasons: list[str]


def render_deployment(
    body: Mapping[str, Any], pool: Pool, catalog: Catalog, settings: ReconcileSettings | None = None
) -> Rendered:
    """The objects of ``body`` (a DSD manifest) on ``pool``, which it books as the operator would.

    A manifest without ``metadata.uid`` (one not read back from a cluster) renders without owner
    references: the API server refuses an owner without a uid, and the operator adds them when it applies.
    """
    metadata = dict(body.get("metadata") or {})
    metadata.setdefault("namespace", "default")
    manifest = {**body, "metadata": metadata}
    result = reconcile(manifest, catalog, pool, [], RENDER_TIME, settings or ReconcileSettings(lws_available=True))
    objects = [_without_empty_owner(obj) for obj in result.objects]
    status = result.status
    conditions = {c.type: c for c in status.conditions}
    reasons = [c.message for t, c in conditions.items() if t in ("Scheduled", "Interconnect") and c.message]
    return Rendered(
        name=f"{metadata['namespace']}/{metadata.get('name', '')}",
        objects=objects if not result.hold else [],
        phase=status.phase.value,
        message=status.message or "",
        placed=len(status.placements),
        desired=result.desired or 0,
        reasons=reasons,
    )


def _without_empty_owner(obj: dict[str, Any]) -> dict[str, Any]:
    owners = obj.get("metadata", {}).get("ownerReferences") or []
    if owners and not all(owner.get("uid") for owner in owners):
        obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}}
    return obj
