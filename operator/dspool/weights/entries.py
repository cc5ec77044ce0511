"""What a node model cache holds: one entry per checkpoint actually served.

An entry is identified by where its files come from (the source URI and revision) and the precision they are
in: the FP8 original, a W8A8 ModelSlim checkpoint and a BF16 conversion are different entries, even of one
model. Its directory name on the node is stable, readable and safe as a path and as a Kubernetes name suffix:
``<model>-<precision>-<8 hex digits of the source>``, e.g. ``deepseek-r1-fp8-1f0c2a9e``.

Replicas whose weights come from a PVC or a hostPath the user manages use no entry (nothing to fetch).
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, Field

from dspool.api import DeepSeekDeploymentSpec
from dspool.catalog import ModelSpec, Precision
from dspool.sizing import weights_total_gib

REVISION_SEPARATOR = "@"
DEFAULT_REVISION = "main"
GIB = 1024**3
_UNSAFE = re.compile(r"[^a-z0-9-]+")


class CacheEntry(BaseModel):
    """One checkpoint as a node cache holds it."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="catalog model id")
    precision: Precision
    source: str = Field(description="where the files come from, without the revision (hf://, s3://, https://...)")
    revision: str = DEFAULT_REVISION
    size_gib: float = Field(ge=0, description="expected size (the catalog's checkpoint size until fetched)")

    @property
    def id(self) -> str:
        """The entry's directory name on every node, e.g. ``deepseek-r1-fp8-1f0c2a9e``."""
        digest = hashlib.sha256(f"{self.source}{REVISION_SEPARATOR}{self.revision}".encode()).hexdigest()[:8]
        stem = _UNSAFE.sub("-", f"{self.model}-{self.precision.value}".lower()).strip("-")
        return f"{stem[:50]}-{digest}"

    @property
    def size_bytes(self) -> int:
        """Expected size in bytes."""
        return int(self.size_gib * GIB)


REVISIONED_SCHEMES = ("hf://", "modelscope://")  # model hubs, whose repositories have revisions


def split_revision(uri: str) -> tuple[str, str]:
    """``hf://org/repo@rev`` -> (``hf://org/repo``, ``rev``); no revision -> ``main``. Only model-hub URIs
    carry one, on their last path segment (an ``https://user@host/...`` is left alone)."""
    head, slash, last = uri.rpartition("/")
    if uri.startswith(REVISIONED_SCHEMES) and REVISION_SEPARATOR in last and slash:
        name, _, revision = last.partition(REVISION_SEPARATOR)
        if name and revision:
            return f"{head}/{name}", revision
    return uri, DEFAULT_REVISION


def entry_for(spec: DeepSeekDeploymentSpec, model: ModelSpec, precision: Precision) -> CacheEntry | None:
    """The cache entry a replica of this spec serves from, or None when its weights are the user's (a PVC or
    a hostPath). Without a ``modelSource`` the weights come from the model hub under the model's id."""
    source = spec.model_source
    if source is not None and (source.pvc is not None or source.host_path is not None):
        return None
    uri = source.uri if source is not None and source.uri else f"hf://{model.hf_id}"
    location, revision = split_revision(uri)
    return CacheEntry(
        model=model.id,
        precision=precision,
        source=location,
        revision=revision,
        size_gib=round(weights_total_gib(model, precision), 1),
    )


def request_entry(spec: DeepSeekDeploymentSpec, model: ModelSpec) -> CacheEntry | None:
    """The entry a replica request carries into placement: the spec's source in its precision (BF16 when the
    precision is ``auto``; each candidate type's plan then serves the same source in its own precision,
    :func:`dspool.weights.estimate.entry_in_precision`). None for weights on a PVC or a hostPath."""
    seed = spec.precision if spec.precision != "auto" else Precision.BF16
    return entry_for(spec, model, Precision(seed))
