"""The sizing planner: devices per replica, nodes, precision and parallel layout from a memory account.

Pure functions of catalog entries and a validated request; no I/O. The rules (see docs/sizing.md):

- precision ``auto`` is the cheapest precision the backend runs for that checkpoint on that hardware:
  the native one where the hardware runs it; an FP8 checkpoint on NVIDIA without FP8 (Ampere) served
  weight-only (W8A16, vLLM's Marlin kernels) when the vLLM image has them; else BF16;
- usable memory per device = device memory x gpuMemoryUtilization - the engine's runtime reserve
  (:mod:`dspool.headroom`: context, communication buffers, the profiled activation peak, CUDA graphs);
- weights (published checkpoint size, else parameters x bytes per parameter; the MTP module only when
  speculative decoding uses it) split over TP x PP devices; the largest pipeline stage holds
  ceil(layers / PP) layers; under data-parallel attention the non-expert part is replicated on every rank;
- KV cache for ``kvCacheTokens`` tokens, as the engine stores it (:func:`kv_layout`: GQA K+V, the MLA latent,
  and for DeepSeek Sparse Attention vLLM's FP8 latent + indexer key in 64-token blocks): GQA splits over TP
  ranks (no further than the KV-head count), MLA is replicated on every TP rank; both split by layers across
  PP stages; data-parallel ranks each hold their share; an FP8 KV cache halves the bytes of GQA and MLA;
- an engine whose image predates the checkpoint's architecture, or that cannot run it on the hardware, is
  refused (:mod:`dspool.engine_support`); ``auto`` takes the vendor's first engine that serves it;
- only layouts the backend accepts (:mod:`dspool.layouts`); TP stays inside one node; more than one node
  means one pipeline stage per node (or whole nodes of data-parallel ranks); the fewest nodes win, then
  the fewest devices, and a layout with little headroom (``marginal``) only when no safer one fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from pydantic.alias_generators import to_camel

from dspool.backends import Backend as Backend  # re-exported: callers import it from dspool.sizing
from dspool.catalog import AcceleratorSpec, ModelSpec, Precision, Vendor
from dspool.engine_support import engine_refusal, hardware_refusal, image_for, version_text
from dspool.engine_support import image_version as image_version  # re-exported: callers import it from here
from dspool.headroom import RuntimeReserve, runtime_reserve
from dspool.layouts import Layout, layout_refusals

GIB = 1024**3

# Bytes per parameter when no published checkpoint size is known. 8-bit formats keep embeddings,
# norms and scales in 16 bits, hence a little over one byte.
BYTES_PER_PARAM: dict[Precision, float] = {
    Precision.FP8: 1.0,
    Precision.BF16: 2.0,
    Precision.W8A8: 1.05,
    Precision.W8A16: 1.05,
}

# The first vLLM release that serves block-wise FP8 checkpoints (DeepSeek-V3/R1) weight-only on GPUs
# without FP8 tensor cores (compute capability < 8.9): Marlin kernels for the dense layers and for the MoE
# experts. docs/sizing.md cites the pull requests; dspool's default vLLM image is at least this release.
VLLM_FP8_MARLIN_MIN_VERSION = (0, 9, 0)

# How vLLM stores DeepSeek Sparse Attention's caches (docs/sizing.md, "The KV account per attention variant").
# The MLA latent in FlashMLA's "FP8 with scale" format (cache dtype fp8_ds_mla): the 512 latent values in FP8, one
# float32 scale per 128 of them, and the 64 RoPE values kept in BF16 = 656 bytes per token and layer
# (vllm/v1/attention/backends/mla/flashmla_sparse.py, get_kv_cache_shape). The indexer's key: 128 FP8 values and
# one float32 scale per 128 = 132 bytes (deepseek_v2.py, Indexer: head_dim + head_dim // quant_block_size * 4).
# FlashMLASparse forces 64-token cache blocks (vllm/platforms/cuda.py).
SPARSE_MLA_SCALE_GROUP = 128
SPARSE_MLA_BLOCK_TOKENS = 64
FP32_BYTES = 4

DEFAULT_KV_CACHE_TOKENS = 32768
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_MAX_NODES = 8

# A plan leaving less than this share of a device's memory free after weights, the requested KV cache
# and the runtime reserve is "marginal": an estimate a few percent off, or a larger batch, and the engine
# fails its start-up memory check. Such a plan is chosen only when no layout with more room fits.
MARGINAL_FRACTION = 0.05
MAX_SUGGESTED_UTILIZATION = 0.95  # above it, CUDA graphs and the context may not fit outside vLLM's budget

BACKENDS_BY_VENDOR: dict[Vendor, tuple[Backend, ...]] = {
    Vendor.NVIDIA: (Backend.VLLM,),
    Vendor.ASCEND: (Backend.MINDIE, Backend.VLLM_ASCEND),
}

Parallelism = Literal["tensor", "data-expert"]
KvCacheDtype = Literal["auto", "fp8"]


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SizingRequest(_Camel):
    """What the user asks for, beyond model and accelerator; every field has a documented default."""

    precision: Literal["auto"] | Precision = "auto"
    backend: Literal["auto"] | Backend = "auto"
    kv_cache_tokens: int = Field(default=DEFAULT_KV_CACHE_TOKENS, ge=1, le=10_000_000)
    max_model_len: int | None = Field(default=None, ge=1, le=10_000_000)
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    devices_per_node: int | None = Field(default=None, ge=1, le=64)
    device_memory_gib: float | None = Field(default=None, gt=0, description="overrides the catalog (node label)")
    overhead_gib: float | None = Field(default=None, ge=0, description="overrides the engine's runtime reserve")
    max_nodes: int = Field(default=DEFAULT_MAX_NODES, ge=1, le=64)
    allow_multi_node: bool = True
    engine_image: str | None = Field(
        default=None, description="the engine image when pinned (spec.serving.image); None = dspool's default"
    )
    parallelism: Parallelism = Field(
        default="tensor",
        description="tensor: TP inside a node, PP across nodes; data-expert: data-parallel attention with "
        "expert-parallel MoE (one MLA cache per rank)",
    )
    kv_cache_dtype: KvCacheDtype = "auto"
    speculative_tokens: int = Field(default=0, ge=0, le=8, description="MTP draft tokens per step; 0 = off")
    accept_marginal: bool = Field(default=False, description="take the smallest fitting layout even if marginal")


class MemoryAccount(_Camel):
    """Per-device memory account of one layout, GiB."""

    device_memory: float
    usable_per_device: float = Field(description="device memory x utilization - runtime reserve")
    weights_per_device: float
    kv_cache_per_device: float
    overhead_per_device: float = Field(description="the engine's runtime reserve (dspool.headroom)")
    free_per_device: float = Field(description="usable - weights - KV; negative when it does not fit")
    weights_total: float

    @field_serializer("*")
    def _round(self, value: float) -> float:
        return round(value, 2)


class SizingPlan(_Camel):
    """The planner's answer for one model on one accelerator type."""

    model: str
    accelerator: str
    precision: Precision | None
    backend: Backend | None
    feasible: bool
    devices_per_replica: int
    nodes_per_replica: int
    devices_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int = 1
    expert_parallel: bool = False
    max_model_len: int
    kv_cache_tokens: int
    kv_cache_dtype: KvCacheDtype = "auto"
    speculative_tokens: int = 0
    memory_gib: MemoryAccount = Field(alias="memoryGiB")
    marginal: bool = Field(default=False, description="less than 5% of device memory left: may fail to start")
    reason: str
    precision_note: str = Field(default="", description="why this precision, when it is not the checkpoint's own")

    @model_validator(mode="after")
    def _check_shape(self) -> SizingPlan:
        layout_devices = self.tensor_parallel * self.pipeline_parallel * self.data_parallel
        if self.feasible and self.devices_per_replica != layout_devices:
            raise ValueError("devicesPerReplica must equal tensorParallel x pipelineParallel x dataParallel")
        if self.feasible and self.devices_per_replica != self.nodes_per_replica * self.devices_per_node:
            raise ValueError("devicesPerReplica must equal nodesPerReplica x devicesPerNode")
        return self

    @property
    def shape(self) -> Layout:
        """The parallel layout."""
        return Layout(self.tensor_parallel, self.pipeline_parallel, self.data_parallel, self.expert_parallel)

    @property
    def layout(self) -> str:
        """Human-readable layout, e.g. 'TP8 x PP2'."""
        if not self.feasible:
            return "-"
        return self.shape.describe()


def weights_total_gib(model: ModelSpec, precision: Precision) -> float:
    """Weight bytes of the whole published checkpoint at a precision (MTP module included).

    W8A16 of an FP8 checkpoint is that checkpoint itself, its 8-bit weights dequantized on the fly.
    """
    if precision in model.checkpoint_gib:
        return model.checkpoint_gib[precision]
    if precision == Precision.W8A16 and Precision.FP8 in model.checkpoint_gib:
        return model.checkpoint_gib[Precision.FP8]
    return model.checkpoint_params_b * 1e9 * BYTES_PER_PARAM[precision] / GIB


def mtp_weights_gib(model: ModelSpec, precision: Precision) -> float:
    """The multi-token-prediction module's share of the checkpoint; engines load it only to speculate."""
    return weights_total_gib(model, precision) * model.mtp_params_b / model.checkpoint_params_b


def mtp_weights_per_device_gib(
    model: ModelSpec, precision: Precision, tensor_parallel: int, data_parallel: int
) -> float:
    """One device's share of the MTP module, which vLLM shards like the model's own layers.

    The module is one MoE decoder layer (its routed experts: 3 x hidden x expert width x experts
    parameters) plus projections: under tensor parallelism all of it splits by TP; under data-parallel
    attention the experts split over every rank and the rest stays whole on each.
    """
    total = mtp_weights_gib(model, precision)
    if data_parallel == 1 or not model.moe or model.moe_intermediate_size is None or model.routed_experts is None:
        return total / tensor_parallel
    experts_b = 3 * model.hidden_size * model.moe_intermediate_size * model.routed_experts / 1e9
    expert_share = min(1.0, experts_b / model.mtp_params_b)
    return total * ((1 - expert_share) / tensor_parallel + expert_share / (tensor_parallel * data_parallel))


def main_weights_gib(model: ModelSpec, precision: Precision) -> float:
    """What the engine loads without speculative decoding: the checkpoint less its MTP module."""
    return weights_total_gib(model, precision) - mtp_weights_gib(model, precision)


def stage_fraction(model: ModelSpec, pipeline_parallel: int) -> float:
    """Share of the model's layers held by the largest of ``pipeline_parallel`` stages."""
    return math.ceil(model.layers / pipeline_parallel) / model.layers


def kv_split(model: ModelSpec, tensor_parallel: int) -> int:
    """How many ways TP splits the KV cache: MLA not at all, GQA up to the KV-head count."""
    return 1 if model.attention == "mla" else min(tensor_parallel, model.kv_heads)


@dataclass(frozen=True)
class KvLayout:
    """What one engine stores per token and layer of one copy of the cache: the attention cache, the DSA
    indexer's keys, and the cache block (an engine allocates whole blocks of ``block_tokens`` tokens)."""

    attention_bytes: int
    indexer_bytes: int
    block_tokens: int
    format: str

    @property
    def per_layer(self) -> int:
        """Bytes per token and layer, everything included."""
        return self.attention_bytes + self.indexer_bytes


def kv_layout(model: ModelSpec, backend: Backend | None = None, kv_cache_dtype: KvCacheDtype = "auto") -> KvLayout:
    """The KV cache ``backend`` (default vLLM) keeps per token and layer for ``model``.

    GQA: K and V of every KV head; MLA: one latent of kv_lora_rank + RoPE dims; both BF16, or one byte per value
    with ``kv_cache_dtype: fp8``. DeepSeek Sparse Attention on vLLM: the FP8 latent with per-128 scales and the
    FP8 indexer key (the format vLLM uses for V3.2, whatever ``kv_cache_dtype``), in 64-token blocks; on the
    Ascend engines a BF16 latent and a BF16 indexer key (vllm-ascend's AttentionSpec patch; MindIE unverified).
    """
    element = 1 if kv_cache_dtype == "fp8" else 2
    if model.attention == "gqa":
        return KvLayout(2 * model.kv_heads * model.head_dim * element, 0, 1, f"GQA K+V, {_dtype_name(element)}")
    assert model.mla_kv_lora_rank is not None and model.mla_rope_head_dim is not None
    rank, rope = model.mla_kv_lora_rank, model.mla_rope_head_dim
    if not model.sparse_attention:
        return KvLayout((rank + rope) * element, 0, 1, f"MLA latent, {_dtype_name(element)}")
    assert model.index_head_dim is not None
    if backend in (None, Backend.VLLM):
        latent = rank + rank // SPARSE_MLA_SCALE_GROUP * FP32_BYTES + rope * 2
        key = model.index_head_dim + model.index_head_dim // SPARSE_MLA_SCALE_GROUP * FP32_BYTES
        return KvLayout(latent, key, SPARSE_MLA_BLOCK_TOKENS, "MLA latent fp8_ds_mla + FP8 indexer key")
    return KvLayout((rank + rope) * 2, model.index_head_dim * 2, 1, "MLA latent BF16 + BF16 indexer key")


def _dtype_name(element_bytes: int) -> str:
    return "FP8" if element_bytes == 1 else "BF16"


def kv_bytes_per_token(
    model: ModelSpec, kv_cache_dtype: KvCacheDtype = "auto", backend: Backend | None = None
) -> float:
    """KV bytes per cached token over all layers, one full copy, as ``backend`` (default vLLM) stores it."""
    return kv_layout(model, backend, kv_cache_dtype).per_layer * model.layers


def kv_bytes_per_token_per_device(
    model: ModelSpec,
    tensor_parallel: int,
    pipeline_parallel: int,
    kv_cache_dtype: KvCacheDtype = "auto",
    backend: Backend | None = None,
) -> float:
    """KV-cache bytes one device holds per token it caches."""
    return (
        kv_bytes_per_token(model, kv_cache_dtype, backend)
        * stage_fraction(model, pipeline_parallel)
        / kv_split(model, tensor_parallel)
    )


def fp8_weight_only_path(accelerator: AcceleratorSpec, backend: Backend, engine_image: str | None) -> tuple[bool, str]:
    """Whether ``backend`` serves an FP8 checkpoint weight-only (W8A16) on ``accelerator``, and a note.

    Only vLLM on NVIDIA has that path (Marlin kernels); MindIE and vllm-ascend take BF16 or ModelSlim
    W8A8/W8A16 checkpoints. A pinned image older than the release with the Marlin paths lacks it; an
    image whose tag names no version is assumed current, and the note says so.
    """
    if accelerator.vendor != Vendor.NVIDIA or backend != Backend.VLLM:
        return False, f"{backend.value} has no FP8 weight path"
    minimum = version_text(VLLM_FP8_MARLIN_MIN_VERSION)
    if engine_image is None:
        return True, ""
    version = image_version(engine_image)
    if version is None:
        return True, f"assumed {engine_image} is vLLM >= {minimum}"
    if version < VLLM_FP8_MARLIN_MIN_VERSION:
        return False, (
            f"the pinned image {engine_image} is vLLM {version_text(version)}, older than {minimum} "
            f"(the first with Marlin W8A16 kernels for block-FP8 dense and MoE layers)"
        )
    return True, ""


def _weight_only_note(accelerator: AcceleratorSpec, assumption: str) -> str:
    return (
        f"FP8 checkpoint served as published, weight-only (w8a16): vLLM's Marlin kernels dequantize the FP8 "
        f"weights to 16 bits on {accelerator.id} ({_describe_hardware(accelerator)}, no FP8 tensor cores), so "
        f"memory stays at FP8 size but compute is 16-bit (prefill slower than native FP8 on Hopper); "
        f"--precision bf16 plans a converted checkpoint" + (f" ({assumption})" if assumption else "")
    )


def resolve_precision(
    model: ModelSpec, accelerator: AcceleratorSpec, asked: str, backend: Backend, engine_image: str | None = None
) -> tuple[Precision | None, str]:
    """The precision to plan with and a note; (None, reason) when the hardware cannot run what was asked.

    ``auto`` is the cheapest precision ``backend`` really runs for the checkpoint on this hardware.
    """
    fp8_checkpoint = model.native_precision == Precision.FP8
    if asked == "auto":
        if model.native_precision in accelerator.precisions:
            return model.native_precision, ""
        weight_only, why = fp8_weight_only_path(accelerator, backend, engine_image)
        if fp8_checkpoint and weight_only:
            return Precision.W8A16, _weight_only_note(accelerator, why)
        note = (
            f"{model.native_precision.value.upper()} checkpoint converted to BF16: {accelerator.id} "
            f"({_describe_hardware(accelerator)}) has no FP8"
        )
        return Precision.BF16, note + (f" and {why}" if fp8_checkpoint and why else "")
    precision = Precision(asked)
    if precision not in accelerator.precisions:
        supported = ", ".join(p.value for p in accelerator.precisions)
        return None, (
            f"{accelerator.id} ({_describe_hardware(accelerator)}) cannot run {precision.value}: FP8 needs NVIDIA "
            f"compute capability >= 8.9 (Ada, Hopper, Blackwell); it runs {supported}"
        )
    if precision == Precision.W8A16 and fp8_checkpoint and accelerator.vendor == Vendor.NVIDIA and not accelerator.fp8:
        weight_only, why = fp8_weight_only_path(accelerator, backend, engine_image)
        if not weight_only:
            return None, f"{accelerator.id} cannot serve {model.id}'s FP8 checkpoint weight-only: {why}"
        return precision, _weight_only_note(accelerator, why)
    if precision == Precision.BF16 and fp8_checkpoint:
        return (
            precision,
            "the FP8 checkpoint must be converted to BF16 first (point modelSource at the converted weights)",
        )
    return precision, ""


def resolve_backend(
    accelerator: AcceleratorSpec, asked: str, model: ModelSpec | None = None, engine_image: str | None = None
) -> tuple[Backend | None, str]:
    """The serving engine: vLLM on NVIDIA, MindIE on Ascend unless vllm-ascend is asked for. With ``model``,
    ``auto`` takes the first engine of the vendor whose image (``engine_image`` when it is that engine's, else
    dspool's default) serves the checkpoint, and an engine asked for that cannot is refused with the reason."""
    allowed = BACKENDS_BY_VENDOR[accelerator.vendor]
    if asked != "auto" and Backend(asked) not in allowed:
        return None, (
            f"backend {asked} does not run on {accelerator.id} ({accelerator.vendor.value}); "
            f"use {' or '.join(b.value for b in allowed)}"
        )
    candidates = allowed if asked == "auto" else (Backend(asked),)
    if model is None:
        return candidates[0], ""
    refusals: list[str] = []
    for backend in candidates:
        refusal = engine_refusal(model.architecture, backend, image_for(backend, engine_image))
        if refusal is None:
            skipped = "; ".join(refusals)
            return backend, f"{skipped}; {backend.value} serves it" if skipped else ""
        refusals.append(refusal)
    return None, "; ".join(refusals)


def _describe_hardware(accelerator: AcceleratorSpec) -> str:
    if accelerator.vendor == Vendor.NVIDIA:
        return f"{accelerator.architecture}, compute capability {accelerator.compute_capability}"
    return f"Huawei {accelerator.architecture}"


def memory_account(
    model: ModelSpec,
    precision: Precision,
    tensor_parallel: int,
    pipeline_parallel: int,
    kv_tokens: int,
    device_memory_gib: float,
    utilization: float,
    overhead_gib: float,
    *,
    data_parallel: int = 1,
    kv_cache_dtype: KvCacheDtype = "auto",
    speculative_tokens: int = 0,
    min_rank_tokens: int = 0,
    backend: Backend | None = None,
) -> MemoryAccount:
    """Per-device memory of one layout.

    Tensor parallel: the weights split over TP x PP devices, the KV cache as :func:`kv_split` says.
    Data-parallel attention (``data_parallel`` > 1, experts spread over every rank): each rank holds the
    non-expert weights whole and 1/(TP x DP) of the experts, and its own share of the KV budget, never
    less than ``min_rank_tokens`` (one longest request). The MTP module is loaded only when
    ``speculative_tokens`` > 0, split like a layer. The KV cache is what ``backend`` stores (:func:`kv_layout`),
    in whole cache blocks.
    """
    loaded = main_weights_gib(model, precision)
    extra = mtp_weights_per_device_gib(model, precision, tensor_parallel, data_parallel) if speculative_tokens else 0.0
    # Weights every TP rank holds whole (vLLM's replicated projections): not divided by TP.
    replicated = loaded * model.replicated_params_b / model.params_b if tensor_parallel > 1 else 0.0
    if data_parallel > 1 and model.dense_params_b is not None:
        dense = loaded * model.dense_params_b / model.params_b
        weights = dense / tensor_parallel + (loaded - dense) / (tensor_parallel * data_parallel) + extra
        tokens = max(math.ceil(kv_tokens / data_parallel), min_rank_tokens)
    else:
        sharded = (loaded - replicated) * stage_fraction(model, pipeline_parallel) / tensor_parallel
        weights = sharded + replicated * stage_fraction(model, pipeline_parallel) + extra
        tokens = kv_tokens
    block = kv_layout(model, backend, kv_cache_dtype).block_tokens
    tokens = math.ceil(tokens / block) * block
    per_token = kv_bytes_per_token_per_device(model, tensor_parallel, pipeline_parallel, kv_cache_dtype, backend)
    kv = tokens * per_token / GIB
    usable = device_memory_gib * utilization - overhead_gib
    return MemoryAccount(
        device_memory=device_memory_gib,
        usable_per_device=usable,
        weights_per_device=weights,
        kv_cache_per_device=kv,
        overhead_per_device=overhead_gib,
        free_per_device=usable - weights - kv,
        weights_total=loaded + (mtp_weights_gib(model, precision) if speculative_tokens else 0.0),
    )


def candidate_layouts(
    model: ModelSpec,
    devices_per_node: int,
    max_nodes: int,
    parallelism: Parallelism = "tensor",
    expert_parallel: bool | None = None,
) -> list[Layout]:
    """Layouts in preference order: fewest nodes first, then fewest devices (engine rules not applied).

    ``tensor``: TP inside a node (1..devices_per_node), one pipeline stage per node. ``data-expert``: TP1
    data-parallel ranks with the experts spread over all of them, 2..devices_per_node ranks on one node or
    whole nodes of ranks. ``expert_parallel`` defaults to whether the model is a MoE.
    """
    experts = model.moe if expert_parallel is None else expert_parallel
    if parallelism == "data-expert":
        single = [Layout(1, 1, dp, expert_parallel=True) for dp in range(2, devices_per_node + 1)]
        multi = [Layout(1, 1, nodes * devices_per_node, expert_parallel=True) for nodes in range(2, max_nodes + 1)]
        return single + multi
    stages = range(1, min(max_nodes, model.layers) + 1)
    return [Layout(tp, pp, expert_parallel=experts) for pp in stages for tp in range(1, devices_per_node + 1)]


def mindie_layouts(devices_per_node: int, max_nodes: int) -> list[Layout]:
    """MindIE's layouts: TP over the NPUs of one server, or TP over every NPU of the rank table.

    Without ``tp``/``dp``/``moe_ep`` in its config MindIE runs attention and MoE tensor-parallel over all
    ranks (MindIE-LLM's parallelism guide: without these settings inference uses tp and moe_tp), so two Atlas 800I
    A2 run TP16 and every NPU holds the whole MLA cache. Multi-node instances use whole servers.
    """
    single = [Layout(tp) for tp in range(1, devices_per_node + 1)]
    return single + [Layout(nodes * devices_per_node) for nodes in range(2, max_nodes + 1)]


def node_shape(layout: Layout, devices_per_node: int) -> tuple[int, int]:
    """(nodes, devices per node) a layout occupies: a stage per node, or ranks packed in whole nodes."""
    per_stage = layout.tensor_parallel * layout.data_parallel
    if per_stage <= devices_per_node:
        return layout.pipeline_parallel, per_stage
    nodes_per_stage = math.ceil(per_stage / devices_per_node)
    return layout.pipeline_parallel * nodes_per_stage, per_stage // nodes_per_stage


def serving_mode_refusal(
    model: ModelSpec, accelerator: AcceleratorSpec, backend: Backend, request: SizingRequest
) -> str | None:
    """Why the backend or hardware cannot run the serving modes asked (FP8 KV, MTP, DP + EP), or None."""
    if request.kv_cache_dtype == "fp8":
        if backend == Backend.MINDIE:
            return (
                "MindIE has no FP8 KV cache; its 8-bit KV cache is an INT8 ModelSlim quantization of the "
                "checkpoint (kvCacheDtype: auto)"
            )
        if backend == Backend.VLLM_ASCEND:
            return "vllm-ascend has no FP8 KV cache on Ascend NPUs (kvCacheDtype: auto)"
        if model.attention == "mla" and not accelerator.fp8:
            return (
                f"an FP8 MLA cache needs FlashMLA or CUTLASS MLA (Hopper, Blackwell); on {accelerator.id} "
                f"vLLM runs the Triton MLA backend, which has no FP8 KV cache"
            )
    if request.speculative_tokens:
        if not model.mtp_params_b:
            return f"{model.id} has no multi-token-prediction module to speculate with"
        if backend != Backend.VLLM:
            return f"MTP speculative decoding is planned for vLLM on NVIDIA only; {backend.value}: unverified"
    if request.parallelism == "data-expert":
        if not model.moe or model.dense_params_b is None:
            return f"data-parallel attention with expert parallelism is for MoE models; {model.id} is dense"
        if backend == Backend.MINDIE:
            return "data-expert parallelism is planned for vLLM and vllm-ascend; MindIE's dp/moe_ep: unverified"
    return None


def plan(model: ModelSpec, accelerator: AcceleratorSpec, request: SizingRequest | None = None) -> SizingPlan:
    """Size one replica of ``model`` on ``accelerator``; infeasible plans carry the reason.

    The steps: choose the backend and precision (or say why none), refuse what cannot be served at all,
    enumerate the layouts the backend may run, account each layout's memory in preference order and pick
    the first that fits with room (else the first marginal fit), then explain the pick or the closest miss.
    """
    request = request or SizingRequest()
    backend, backend_note = resolve_backend(accelerator, str(request.backend), model, request.engine_image)
    precision, precision_note = resolve_precision(
        model, accelerator, str(request.precision), backend or Backend.VLLM, request.engine_image
    )
    ledger = _Ledger(model, accelerator, request, backend, precision, precision_note)
    ledger.backend_note = backend_note if backend is not None else ""
    if backend is None:
        return ledger.infeasible(backend_note)
    if precision is None:
        return ledger.infeasible(precision_note)
    refusal = _request_refusal(model, accelerator, backend, request)
    if refusal is not None:
        return ledger.infeasible(refusal)

    max_nodes = _max_nodes(request, accelerator, backend)
    layouts = _layouts_to_try(model, backend, request, ledger.devices_per_node, max_nodes)
    search = _Search(ledger, precision, backend, layouts)
    one_device = search.account(Layout(1))
    if one_device.usable_per_device <= 0:
        return ledger.infeasible(ledger.nothing_usable_reason(), one_device)

    fit = search.first_fit()
    if fit is not None:
        return _with_cheaper_precision_hint(model, accelerator, request, search.feasible(*fit))
    if search.marginal:
        return search.feasible(*next(iter(search.marginal.items())))
    return search.closest_miss(max_nodes)


def _request_refusal(
    model: ModelSpec, accelerator: AcceleratorSpec, backend: Backend, request: SizingRequest
) -> str | None:
    """Why the request cannot be served in any layout (a maxModelLen past the model's context, a serving
    mode the backend or hardware cannot run), or None."""
    if request.max_model_len is not None and request.max_model_len > model.max_context:
        return f"maxModelLen {request.max_model_len} exceeds {model.id}'s context of {model.max_context}"
    hardware = hardware_refusal(model.architecture, backend, accelerator.compute_capability, accelerator.id)
    return hardware or serving_mode_refusal(model, accelerator, backend, request)


def _max_nodes(request: SizingRequest, accelerator: AcceleratorSpec, backend: Backend) -> int:
    """The most nodes a layout may span: one unless the request and the accelerator allow more, and never
    past the backend's limit per instance."""
    multi_node = request.allow_multi_node and accelerator.multi_node
    return min(request.max_nodes if multi_node else 1, max_nodes_for(backend, accelerator))


def _layouts_to_try(
    model: ModelSpec, backend: Backend, request: SizingRequest, devices_per_node: int, max_nodes: int
) -> list[Layout]:
    """The layouts to account, in preference order: MindIE's TP-only layouts, else vLLM's candidates."""
    expert_parallel = model.moe and backend != Backend.MINDIE  # dspool starts vLLM MoE models with EP
    if backend == Backend.MINDIE:
        return mindie_layouts(devices_per_node, max_nodes)
    return candidate_layouts(model, devices_per_node, max_nodes, request.parallelism, expert_parallel)


# MindIE runs one instance over at most 4 Atlas 800I A2 servers / 32 NPUs (docs/sizing.md cites it).
MINDIE_MAX_NODES = 4
MINDIE_MAX_DEVICES = 32


def max_nodes_for(backend: Backend, accelerator: AcceleratorSpec) -> int:
    """The most nodes one engine instance of ``backend`` spans on ``accelerator`` ("最大支持4机32卡的多机推理",
    MindIE-LLM's mixed-deployment guide: 4 servers / 32 NPUs; vLLM: no limit dspool knows)."""
    if backend == Backend.MINDIE:
        return max(1, min(MINDIE_MAX_NODES, MINDIE_MAX_DEVICES // accelerator.devices_per_node))
    return 64


def _why_single_node(request: SizingRequest, accelerator: AcceleratorSpec, backend: Backend) -> str:
    if not accelerator.multi_node:
        return "unsupported"
    if not request.allow_multi_node or request.max_nodes == 1:
        return "off"
    return f"limited by {backend.value}"


def is_marginal(account: MemoryAccount) -> bool:
    """Whether a fitting layout leaves less than :data:`MARGINAL_FRACTION` of the device free."""
    return 0 <= account.free_per_device < MARGINAL_FRACTION * account.device_memory


def _empty_account(device_memory: float, utilization: float, overhead: float) -> MemoryAccount:
    usable = device_memory * utilization - overhead
    return MemoryAccount(
        device_memory=device_memory,
        usable_per_device=usable,
        weights_per_device=0,
        kv_cache_per_device=0,
        overhead_per_device=overhead,
        free_per_device=usable,
        weights_total=0,
    )


class _Ledger:
    """What one plan() call knows before its search: the device shape and KV budget asked for, each
    layout's runtime reserve (computed once: the search asks for it many times), and how to say no."""

    def __init__(
        self,
        model: ModelSpec,
        accelerator: AcceleratorSpec,
        request: SizingRequest,
        backend: Backend | None,
        precision: Precision | None,
        precision_note: str,
    ) -> None:
        self.model, self.accelerator, self.request = model, accelerator, request
        self.backend, self.precision, self.precision_note = backend, precision, precision_note
        self.devices_per_node = request.devices_per_node or accelerator.devices_per_node
        self.device_memory = request.device_memory_gib or accelerator.memory_gib
        self.kv_tokens = max(request.kv_cache_tokens, request.max_model_len or 0)
        self._reserves: dict[Layout, RuntimeReserve] = {}
        self.backend_note = ""  # why ``auto`` passed over the vendor's first engine, if it did

    def reserve_for(self, layout: Layout) -> RuntimeReserve:
        """The engine's runtime reserve on each device of ``layout`` (vLLM's when no backend was chosen)."""
        if layout not in self._reserves:
            self._reserves[layout] = runtime_reserve(
                self.model,
                self.backend or Backend.VLLM,
                layout,
                self.request.overhead_gib,
                device_memory_gib=self.device_memory,
                accelerator_id=self.accelerator.id,
            )
        return self._reserves[layout]

    def infeasible(self, reason: str, account: MemoryAccount | None = None) -> SizingPlan:
        """The plan that says no, with ``reason`` and the closest memory account (else an empty one)."""
        request = self.request
        overhead = self.reserve_for(Layout(1)).total_gib
        return SizingPlan(
            model=self.model.id,
            accelerator=self.accelerator.id,
            precision=self.precision,
            backend=self.backend,
            feasible=False,
            devices_per_replica=0,
            nodes_per_replica=0,
            devices_per_node=0,
            tensor_parallel=0,
            pipeline_parallel=0,
            max_model_len=0,
            kv_cache_tokens=self.kv_tokens,
            kv_cache_dtype=request.kv_cache_dtype,
            speculative_tokens=request.speculative_tokens,
            memory_gib=account or _empty_account(self.device_memory, request.gpu_memory_utilization, overhead),
            reason=reason,
            precision_note=self.precision_note if self.precision is not None else "",
        )

    def nothing_usable_reason(self) -> str:
        """Why not even one device has room: the utilization leaves nothing after the runtime reserve."""
        return (
            f"{self.device_memory:g} GiB x {self.request.gpu_memory_utilization:g} leaves nothing after "
            f"{self.reserve_for(Layout(1)).total_gib:.1f} GiB runtime reserve"
        )


class _Search:
    """The layouts one plan() call tried: their accounts, the engine's refusals, the marginal fits."""

    def __init__(self, ledger: _Ledger, precision: Precision, backend: Backend, layouts: list[Layout]) -> None:
        self.ledger, self.layouts = ledger, layouts
        self.model, self.accelerator = ledger.model, ledger.accelerator
        self.precision, self.backend = precision, backend
        self.request, self.devices_per_node = ledger.request, ledger.devices_per_node
        self.order = {layout: index for index, layout in enumerate(layouts)}
        self.tried: dict[Layout, MemoryAccount] = {}
        self.refused: dict[Layout, list[str]] = {}
        self.marginal: dict[Layout, MemoryAccount] = {}
        self.outside_short: dict[Layout, float] = {}

    def account(self, layout: Layout) -> MemoryAccount:
        """The per-device memory account of ``layout`` at the chosen precision and the requested KV cache."""
        ledger, request = self.ledger, self.request
        return memory_account(
            self.model,
            self.precision,
            layout.tensor_parallel,
            layout.pipeline_parallel,
            ledger.kv_tokens,
            ledger.device_memory,
            request.gpu_memory_utilization,
            ledger.reserve_for(layout).total_gib,
            data_parallel=layout.data_parallel,
            kv_cache_dtype=request.kv_cache_dtype,
            speculative_tokens=request.speculative_tokens,
            min_rank_tokens=request.max_model_len or 0,
            backend=self.backend,
        )

    def first_fit(self) -> tuple[Layout, MemoryAccount] | None:
        """Account the layouts in order; the first that fits with room (with accept_marginal: that fits at
        all), or None. On the way, note the layouts the engine refuses and the marginal fits skipped."""
        request = self.request
        outside_budget = self.ledger.device_memory * (1 - request.gpu_memory_utilization)
        for layout in self.layouts:
            refusals = layout_refusals(self.model, self.precision, self.backend, layout)
            current = self.tried[layout] = self.account(layout)
            if refusals:
                self.refused[layout] = refusals
                continue
            if current.free_per_device < 0:
                continue
            self.outside_short[layout] = max(0.0, self.ledger.reserve_for(layout).outside_gib - outside_budget)
            tight = is_marginal(current) or self.outside_short[layout] > 0
            if tight:
                self.marginal.setdefault(layout, current)
                if not request.accept_marginal:
                    continue
            return layout, current
        return None

    def closest_miss(self, max_nodes: int) -> SizingPlan:
        """Nothing fits: the refusals when the engine accepts no layout, else the largest layout tried (the
        closest miss) and what it would need."""
        model, precision, kv_tokens = self.model, self.precision, self.ledger.kv_tokens
        accepted = [layout for layout in self.layouts if layout not in self.refused]
        if not accepted:
            first_refusals = "; ".join(f"{layout.describe()}: {'; '.join(why)}" for layout, why in self.refused.items())
            return self.ledger.infeasible(
                f"{self.backend.value} accepts no layout of {model.id} within {self.devices_per_node} devices per "
                f"node: {first_refusals}"
            )
        # Nothing fits: report the largest layout tried, the closest miss.
        largest = accepted[-1]
        closest = self.tried[largest]
        notes = "; ".join(n for n in (self.ledger.precision_note,) if n)
        return _with_cheaper_precision_hint(
            model,
            self.accelerator,
            self.request,
            self.ledger.infeasible(
                f"{model.id} {precision.value} does not fit in {self._node_limit(max_nodes)} {self.accelerator.id}: "
                f"even {largest.describe()} needs {closest.weights_per_device:.1f} GiB weights + "
                f"{closest.kv_cache_per_device:.1f} GiB KV ({kv_tokens} tokens) per device, "
                f"{closest.usable_per_device:.1f} GiB usable" + (f"; {notes}" if notes else ""),
                closest,
            ),
        )

    def _node_limit(self, max_nodes: int) -> str:
        """The nodes the search could span and, on one node or at the backend's limit, why no more."""
        request, backend = self.request, self.backend
        if max_nodes > 1:
            at_backend_limit = max_nodes == max_nodes_for(backend, self.accelerator) < request.max_nodes
            return f"{max_nodes} nodes x {self.devices_per_node}" + (
                f" ({backend.value}'s limit per instance)" if at_backend_limit else ""
            )
        return f"1 node x {self.devices_per_node} (multi-node {_why_single_node(request, self.accelerator, backend)})"

    def feasible(self, layout: Layout, chosen: MemoryAccount) -> SizingPlan:
        """The plan for ``layout`` with a reason naming the layouts below it and why they were not taken."""
        model, request = self.model, self.request
        kv_tokens, precision_note = self.ledger.kv_tokens, self.ledger.precision_note
        per_token = kv_bytes_per_token_per_device(
            model, layout.tensor_parallel, layout.pipeline_parallel, request.kv_cache_dtype, self.backend
        )
        tokens_that_fit = int((chosen.usable_per_device - chosen.weights_per_device) * GIB // per_token)
        tokens_that_fit -= tokens_that_fit % kv_layout(model, self.backend, request.kv_cache_dtype).block_tokens
        max_model_len = request.max_model_len or min(model.max_context, tokens_that_fit)
        nodes, per_node = node_shape(layout, self.devices_per_node)
        marginal = layout in self.marginal
        where = f"{layout.devices} x {self.accelerator.id} on {nodes} node{'s' if nodes > 1 else ''}"
        kv_what = f"{kv_tokens} tokens" + (f" over {layout.data_parallel} ranks" if layout.data_parallel > 1 else "")
        parts = [
            f"{where} ({layout.describe()}, {self.precision.value}, {self.backend.value}): "
            f"{chosen.weights_per_device:.1f} GiB weights + {chosen.kv_cache_per_device:.1f} GiB KV ({kv_what}) of "
            f"{chosen.usable_per_device:.1f} GiB usable per device after a "
            f"{chosen.overhead_per_device:.1f} GiB runtime reserve"
        ]
        if marginal:
            taken = "taken as asked (accept marginal)" if request.accept_marginal else "no layout with more room fits"
            parts.append(f"{self._marginal_note(layout, chosen)}; {taken}")
        parts += self._why_not_smaller(layout)
        parts += [note for note in (precision_note, self.ledger.backend_note) if note]
        return SizingPlan(
            model=model.id,
            accelerator=self.accelerator.id,
            precision=self.precision,
            backend=self.backend,
            feasible=True,
            devices_per_replica=layout.devices,
            nodes_per_replica=nodes,
            devices_per_node=per_node,
            tensor_parallel=layout.tensor_parallel,
            pipeline_parallel=layout.pipeline_parallel,
            data_parallel=layout.data_parallel,
            expert_parallel=layout.expert_parallel,
            max_model_len=max_model_len,
            kv_cache_tokens=kv_tokens,
            kv_cache_dtype=request.kv_cache_dtype,
            speculative_tokens=request.speculative_tokens,
            memory_gib=chosen,
            marginal=marginal,
            reason="; ".join(parts),
            precision_note=precision_note,
        )

    def _how_to_take(self, layout: Layout) -> str:
        """What makes a skipped marginal layout acceptable: the utilization that leaves enough, or the flag."""
        account = self.marginal[layout]
        missing = MARGINAL_FRACTION * account.device_memory - account.free_per_device
        utilization = math.ceil((self.request.gpu_memory_utilization + missing / account.device_memory) * 100) / 100
        if self.outside_short.get(layout, 0.0) == 0 and utilization <= MAX_SUGGESTED_UTILIZATION:
            return f"gpuMemoryUtilization {utilization:.2f} or --accept-marginal takes {layout.describe()}"
        return f"--accept-marginal takes {layout.describe()}"

    def _marginal_note(self, layout: Layout, account: MemoryAccount) -> str:
        short = self.outside_short.get(layout, 0.0)
        if short > 0:
            return (
                f"marginal: gpuMemoryUtilization {self.request.gpu_memory_utilization:g} leaves "
                f"{short:.1f} GiB too little outside the engine's budget for the CUDA/CANN context, communicators "
                f"and CUDA graphs"
            )
        return (
            f"marginal: {account.free_per_device:.1f} GiB left per device, under {MARGINAL_FRACTION:.0%} "
            f"of {account.device_memory:g} GiB"
        )

    def _why_not_smaller(self, chosen: Layout) -> list[str]:
        """The layouts just below the chosen one (the next smaller on as many nodes, the largest on one
        node fewer), and every smaller layout the engine refuses or that was skipped as marginal."""
        nodes = node_shape(chosen, self.devices_per_node)[0]
        below = [
            layout
            for layout in self.tried
            if layout != chosen and layout not in self.refused and layout not in self.marginal
        ]
        same = [
            lay for lay in below if node_shape(lay, self.devices_per_node)[0] == nodes and lay.devices < chosen.devices
        ]
        fewer = [lay for lay in below if node_shape(lay, self.devices_per_node)[0] == nodes - 1]
        notes = []
        for layout in [*same[-1:], *fewer[-1:]]:
            need = self.tried[layout].weights_per_device + self.tried[layout].kv_cache_per_device
            notes.append(f"{layout.describe()} would need {need:.1f} GiB per device")
        preceding = [layout for layout in self.tried if self.order[layout] < self.order[chosen]]
        skipped = [
            f"{layout.describe()} ({self._marginal_note(layout, self.marginal[layout]).removeprefix('marginal: ')})"
            for layout in preceding
            if layout in self.marginal
        ]
        if skipped:
            first = next(layout for layout in preceding if layout in self.marginal)
            notes.append(f"not taken as marginal: {', '.join(skipped)}; {self._how_to_take(first)}")
        refused = [
            f"{layout.describe()} ({self.refused[layout][0]})"
            for layout in preceding
            if layout in self.refused and self.tried[layout].free_per_device >= 0
        ]
        if refused:
            notes.append(f"{self.backend.value} refuses the smaller layouts that would fit: {', '.join(refused)}")
        return notes


def _with_cheaper_precision_hint(
    model: ModelSpec, accelerator: AcceleratorSpec, request: SizingRequest, result: SizingPlan
) -> SizingPlan:
    """When ``auto`` fell back to BF16, say what an 8-bit quantization would need instead."""
    if request.precision != "auto" or result.precision != Precision.BF16 or model.native_precision == Precision.BF16:
        return result
    alternative = plan(model, accelerator, request.model_copy(update={"precision": Precision.W8A8}))
    if not alternative.feasible or (result.feasible and alternative.devices_per_replica >= result.devices_per_replica):
        return result
    hint = (
        f"--precision w8a8 needs {alternative.devices_per_replica} devices on "
        f"{alternative.nodes_per_replica} node{'s' if alternative.nodes_per_replica > 1 else ''}"
    )
    return result.model_copy(update={"reason": f"{result.reason}; {hint}"})
