"""What the placement engine is asked and what it answers: a replica to place (:class:`ReplicaRequest`), the
models to keep room for (:class:`DemandMix`), and the outcome (:class:`Decision`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, Field, PrivateAttr

from dspool.api import DeepSeekDeploymentSpec, NodeDevices, ReplicaPlacement, Strategy, Toleration
from dspool.catalog import Catalog, ModelSpec
from dspool.plancache import model_fingerprint
from dspool.sizing import DEFAULT_KV_CACHE_TOKENS, SizingPlan, SizingRequest
from dspool.weights.entries import CacheEntry


class ReplicaRequest(BaseModel):
    """One replica to place: the model, how to size it and where it may go."""

    deployment: str = Field(description="namespace/name of the DeepSeekDeployment")
    replica: int = Field(ge=0)
    model: ModelSpec
    sizing: SizingRequest = Field(default_factory=SizingRequest)
    accelerator_types: list[str] = Field(default_factory=list, description="preference order; empty = any")
    strategy: Strategy = Strategy.BINPACK
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    allow_multi_node: bool = True
    avoid_nodes: list[str] = Field(default_factory=list, description="nodes this replica just failed on")
    cache_entry: CacheEntry | None = Field(
        default=None, description="the weights it serves from a node cache (None: the user's own volume)"
    )

    @classmethod
    def from_spec(
        cls,
        namespace: str,
        name: str,
        replica: int,
        spec: DeepSeekDeploymentSpec,
        catalog: Catalog,
        default_engine_image: str | None = None,
    ) -> ReplicaRequest:
        """The request for replica ``replica`` of a DeepSeekDeployment spec.

        ``default_engine_image``: the vLLM image the operator runs when the spec pins none, if the site
        replaced dspool's own default (what the image supports decides the precision on Ampere).
        """
        serving = spec.serving
        return cls(
            deployment=f"{namespace}/{name}",
            replica=replica,
            model=catalog.model(spec.model),
            sizing=SizingRequest(
                precision=spec.precision,
                backend=spec.backend,
                kv_cache_tokens=serving.kv_cache_tokens or DEFAULT_KV_CACHE_TOKENS,
                max_model_len=serving.max_model_len,
                gpu_memory_utilization=serving.gpu_memory_utilization,
                engine_image=serving.image or default_engine_image,
                parallelism=serving.parallelism.value,
                kv_cache_dtype=serving.kv_cache_dtype.value,
                speculative_tokens=(
                    serving.speculative_decoding.num_speculative_tokens if serving.speculative_decoding else 0
                ),
            ),
            accelerator_types=list(spec.placement.accelerator_types),
            strategy=spec.placement.strategy,
            node_selector=dict(spec.placement.node_selector),
            tolerations=list(spec.placement.tolerations),
            allow_multi_node=spec.placement.allow_multi_node,
        )


class Decision(BaseModel):
    """The outcome for one replica: a placement (or None) and a sentence saying why."""

    placement: ReplicaPlacement | None
    reason: str
    plan: SizingPlan | None = None


DEFAULT_WEIGHT = 1.0


class DemandMix(BaseModel):
    """The models the pool should keep room for, with relative weights (default 1 each)."""

    models: list[ModelSpec] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict, description="model id -> weight; missing = 1")
    _key: tuple[Any, ...] | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, models: Iterable[ModelSpec], weights: Mapping[str, float] | None = None) -> DemandMix:
        """A mix of these models (duplicates dropped, first kept), e.g. those of the DSDs in the cluster."""
        unique: dict[str, ModelSpec] = {}
        for model in models:
            unique.setdefault(model.id, model)
        return cls(models=list(unique.values()), weights=dict(weights or {}))

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> DemandMix:
        """Every model of the catalog, weight 1: the default when the caller knows no better."""
        return cls.of(catalog.models)

    def weight(self, model_id: str) -> float:
        """The model's weight in the mix."""
        return self.weights.get(model_id, DEFAULT_WEIGHT)

    @property
    def key(self) -> tuple[Any, ...]:
        """A hashable identity of the mix (models and weights), for memoisation."""
        private = self.__pydantic_private__ or {}  # direct: pydantic's private-attribute lookup is slow
        key: tuple[Any, ...] | None = private.get("_key")
        if key is None:
            key = tuple((model_fingerprint(m), self.weight(m.id)) for m in self.models)
            self._key = key
        return key


# catalog object id -> (the catalog, its mix); the catalog is kept so that its id cannot be reused
_CATALOG_MIXES: dict[int, tuple[Catalog, DemandMix]] = {}
CATALOG_MIX_LIMIT = 16


def catalog_mix(catalog: Catalog) -> DemandMix:
    """``DemandMix.from_catalog``, built once per catalog object (the default of every decision)."""
    cached = _CATALOG_MIXES.get(id(catalog))
    if cached is not None and cached[0] is catalog:
        return cached[1]
    if len(_CATALOG_MIXES) >= CATALOG_MIX_LIMIT:
        _CATALOG_MIXES.clear()
    mix = DemandMix.from_catalog(catalog)
    _CATALOG_MIXES[id(catalog)] = (catalog, mix)
    return mix


_Model = TypeVar("_Model", bound=BaseModel)


def trusted(cls: type[_Model], values: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> _Model:
    """What ``cls.model_construct(**values)`` builds (``defaults``: the fields left unset, with their default
    values), without its per-field alias search, which costs more than the rest of a decision's bookkeeping.

    For values valid by construction only, and models without private attributes or post-init hooks
    (``tests/unit/test_placement_speed.py`` checks the result equals ``model_construct``'s).
    """
    model = cls.__new__(cls)
    fields_set = set(values)
    if defaults:
        values.update(defaults)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", fields_set)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


_PLACEMENT_DEFAULTS = {"spec_hash": ""}


def new_decision(placement: ReplicaPlacement | None, reason: str, plan: SizingPlan | None = None) -> Decision:
    """``Decision(placement=..., reason=..., plan=...)`` for values the engine built (no validation)."""
    return trusted(Decision, {"placement": placement, "reason": reason, "plan": plan})


def placement_from_plan(sized: SizingPlan, nodes: Sequence[str], replica: int) -> ReplicaPlacement:
    """The placement of a feasible plan on these nodes (one pipeline stage of TP devices on each)."""
    assert sized.precision is not None and sized.backend is not None
    # built from a feasible plan, so valid by construction: no validation on the placement hot path
    devices = sized.devices_per_node
    values = {
        "replica": replica,
        "accelerator": sized.accelerator,
        "precision": sized.precision,
        "backend": sized.backend,
        "tensor_parallel": sized.tensor_parallel,
        "pipeline_parallel": sized.pipeline_parallel,
        "data_parallel": sized.data_parallel,
        "max_model_len": sized.max_model_len,
        "nodes": [trusted(NodeDevices, {"name": name, "devices": devices}) for name in nodes],
    }
    return trusted(ReplicaPlacement, values, _PLACEMENT_DEFAULTS)
