"""``sizing.plan`` memoised for the placement engine, which asks the same question many times per pass."""

from __future__ import annotations

from typing import Any

from dspool.catalog import AcceleratorSpec, ModelSpec
from dspool.sizing import SizingPlan, SizingRequest, plan

PLAN_CACHE_LIMIT = 4096

_PLAN_CACHE: dict[tuple[Any, ...], SizingPlan] = {}


def model_fingerprint(model: ModelSpec) -> tuple[Any, ...]:
    """What identifies a model's sizing (a catalog override of any of these changes the plan)."""
    return (
        model.id,
        model.hf_id,
        model.params_b,
        model.layers,
        model.attention_heads,
        model.kv_heads,
        model.head_dim,
        model.max_context,
        model.native_precision,
        model.kv_bytes_per_token,
        tuple(sorted(model.checkpoint_gib.items())),
        model.intermediate_size,
        model.moe_intermediate_size,
        model.routed_experts,
        model.weight_block_size,
        model.dense_params_b,
        model.mtp_params_b,
        model.vocab_size,
        model.replicated_params_b,
        model.architecture,  # which engine releases serve it
        model.index_head_dim,  # the DSA indexer's key cache
    )


def _accelerator_fingerprint(accelerator: AcceleratorSpec) -> tuple[Any, ...]:
    return (
        accelerator.id,
        accelerator.vendor,
        accelerator.architecture,
        accelerator.compute_capability,
        accelerator.memory_gib,
        accelerator.devices_per_node,
        accelerator.multi_node,
    )


def sized_plan(
    model: ModelSpec, accelerator: AcceleratorSpec, sizing: SizingRequest, device_memory_gib: float, devices: int
) -> SizingPlan:
    """``sizing.plan`` with the pool's device memory and server size, memoised (the planner is called a lot)."""
    key = (
        model_fingerprint(model),
        _accelerator_fingerprint(accelerator),
        tuple(sizing.model_dump().items()),
        device_memory_gib,
        devices,
    )
    cached = _PLAN_CACHE.get(key)
    if cached is not None:
        return cached
    if len(_PLAN_CACHE) >= PLAN_CACHE_LIMIT:
        _PLAN_CACHE.clear()
    result = plan(
        model,
        accelerator,
        sizing.model_copy(update={"device_memory_gib": device_memory_gib, "devices_per_node": devices}),
    )
    _PLAN_CACHE[key] = result
    return result
