"""The sizing planner: devices per replica, nodes, precision and TP/PP layout from a memory account.

Pure functions of catalog entries and a validated request; no I/O. The rules (see docs/sizing.md):

- precision ``auto`` is the cheapest precision the backend runs for that checkpoint on that hardware:
  the native one where the hardware runs it; an FP8 checkpoint on NVIDIA without FP8 (Ampere) served
  weight-only (W8A16, vLLM's Marlin kernels) when the vLLM image has them; else BF16;
- usable memory per device = device memory x gpuMemoryUtilization - the backend's runtime overhead;
- weights (published checkpoint size, else parameters x bytes per parameter) split over TP x PP devices;
  the largest pipeline stage holds ceil(layers / PP) layers;
- KV cache for ``kvCacheTokens`` tokens: GQA splits over TP ranks (no further than the KV-head count),
  MLA is replicated on every TP rank; both split by layers across PP stages;
- TP divides the attention-head count and stays inside one node; more than one node means one pipeline
  stage per node; the fewest nodes win, then the fewest devices.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from pydantic.alias_generators import to_camel

from dspool.catalog import AcceleratorSpec, ModelSpec, Precision, Vendor

GIB = 1024**3


class Backend(StrEnum):
    """Serving engines dspool can run."""

    VLLM = "vllm"
    MINDIE = "mindie"
    VLLM_ASCEND = "vllm-ascend"


# Memory a serving engine takes per device beyond weights and KV cache: CUDA/CANN context, collective
# communication buffers, CUDA graphs and the activation peak of a prefill chunk. Defaults, overridable
# per request; they are estimates ([U] in domain-facts), erring on the safe side.
RUNTIME_OVERHEAD_GIB: dict[Backend, float] = {
    Backend.VLLM: 2.5,
    Backend.MINDIE: 3.0,
    Backend.VLLM_ASCEND: 3.0,
}

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

DEFAULT_KV_CACHE_TOKENS = 32768
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_MAX_NODES = 8

BACKENDS_BY_VENDOR: dict[Vendor, tuple[Backend, ...]] = {
    Vendor.NVIDIA: (Backend.VLLM,),
    Vendor.ASCEND: (Backend.MINDIE, Backend.VLLM_ASCEND),
}


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
    overhead_gib: float | None = Field(default=None, ge=0, description="overrides the backend default")
    max_nodes: int = Field(default=DEFAULT_MAX_NODES, ge=1, le=64)
    allow_multi_node: bool = True
    engine_image: str | None = Field(
        default=None, description="the engine image when pinned (spec.serving.image); None = dspool's default"
    )


class MemoryAccount(_Camel):
    """Per-device memory account of one layout, GiB."""

    device_memory: float
    usable_per_device: float = Field(description="device memory x utilization - overhead")
    weights_per_device: float
    kv_cache_per_device: float
    overhead_per_device: float
    free_per_device: float = Field(description="usable - weights - KV; negative when it does not fit")
    weights_total: float

    @field_serializer("*")
    def _round(self, value: float) -> float:
        return round(value, 2)


class Plan(_Camel):
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
    max_model_len: int
    kv_cache_tokens: int
    memory_gib: MemoryAccount = Field(alias="memoryGiB")
    reason: str
    precision_note: str = Field(default="", description="why this precision, when it is not the checkpoint's own")

    @model_validator(mode="after")
    def _check_shape(self) -> Plan:
        if self.feasible and self.devices_per_replica != self.tensor_parallel * self.pipeline_parallel:
            raise ValueError("devicesPerReplica must equal tensorParallel x pipelineParallel")
        return self

    @property
    def layout(self) -> str:
        """Human-readable layout, e.g. 'TP8 x PP2'."""
        if not self.feasible:
            return "-"
        return f"TP{self.tensor_parallel}" + (f" x PP{self.pipeline_parallel}" if self.pipeline_parallel > 1 else "")


def tensor_parallel_choices(model: ModelSpec, devices_per_node: int) -> list[int]:
    """TP sizes that divide the attention-head count and fit in one node, ascending."""
    return [tp for tp in range(1, devices_per_node + 1) if model.attention_heads % tp == 0]


def weights_total_gib(model: ModelSpec, precision: Precision) -> float:
    """Weight bytes of the whole model at a precision (published checkpoint size when known).

    W8A16 of an FP8 checkpoint is that checkpoint itself, its 8-bit weights dequantized on the fly.
    """
    if precision in model.checkpoint_gib:
        return model.checkpoint_gib[precision]
    if precision == Precision.W8A16 and Precision.FP8 in model.checkpoint_gib:
        return model.checkpoint_gib[Precision.FP8]
    return model.params_b * 1e9 * BYTES_PER_PARAM[precision] / GIB


def stage_fraction(model: ModelSpec, pipeline_parallel: int) -> float:
    """Share of the model's layers held by the largest of ``pipeline_parallel`` stages."""
    return math.ceil(model.layers / pipeline_parallel) / model.layers


def kv_split(model: ModelSpec, tensor_parallel: int) -> int:
    """How many ways TP splits the KV cache: MLA not at all, GQA up to the KV-head count."""
    return 1 if model.attention == "mla" else min(tensor_parallel, model.kv_heads)


def kv_bytes_per_token_per_device(model: ModelSpec, tensor_parallel: int, pipeline_parallel: int) -> float:
    """KV-cache bytes one device holds per cached token."""
    return model.kv_bytes_per_token * stage_fraction(model, pipeline_parallel) / kv_split(model, tensor_parallel)


def image_version(image: str) -> tuple[int, ...] | None:
    """The release an image's tag names (``vllm/vllm-openai:v0.11.0`` -> (0, 11, 0)); None when it names none."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if ":" not in name:
        return None
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", name.rsplit(":", 1)[1])
    if match is None:
        return None
    return tuple(int(part) for part in match.groups(default="0"))


def _version_text(version: tuple[int, ...]) -> str:
    return "v" + ".".join(str(part) for part in version)


def fp8_weight_only_path(accelerator: AcceleratorSpec, backend: Backend, engine_image: str | None) -> tuple[bool, str]:
    """Whether ``backend`` serves an FP8 checkpoint weight-only (W8A16) on ``accelerator``, and a note.

    Only vLLM on NVIDIA has that path (Marlin kernels); MindIE and vllm-ascend take BF16 or ModelSlim
    W8A8/W8A16 checkpoints. A pinned image older than the release with the Marlin paths lacks it; an
    image whose tag names no version is assumed current, and the note says so.
    """
    if accelerator.vendor != Vendor.NVIDIA or backend != Backend.VLLM:
        return False, f"{backend.value} has no FP8 weight path"
    minimum = _version_text(VLLM_FP8_MARLIN_MIN_VERSION)
    if engine_image is None:
        return True, ""
    version = image_version(engine_image)
    if version is None:
        return True, f"assumed {engine_image} is vLLM >= {minimum}"
    if version < VLLM_FP8_MARLIN_MIN_VERSION:
        return False, (
            f"the pinned image {engine_image} is vLLM {_version_text(version)}, older than {minimum} "
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


def resolve_backend(accelerator: AcceleratorSpec, asked: str) -> tuple[Backend | None, str]:
    """The serving engine: vLLM on NVIDIA, MindIE on Ascend unless vllm-ascend is asked for."""
    allowed = BACKENDS_BY_VENDOR[accelerator.vendor]
    if asked == "auto":
        return allowed[0], ""
    backend = Backend(asked)
    if backend not in allowed:
        return None, (
            f"backend {backend.value} does not run on {accelerator.id} ({accelerator.vendor.value}); "
            f"use {' or '.join(b.value for b in allowed)}"
        )
    return backend, ""


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
) -> MemoryAccount:
    """Per-device memory of one TP x PP layout."""
    weights_total = weights_total_gib(model, precision)
    weights = weights_total * stage_fraction(model, pipeline_parallel) / tensor_parallel
    kv = kv_tokens * kv_bytes_per_token_per_device(model, tensor_parallel, pipeline_parallel) / GIB
    usable = device_memory_gib * utilization - overhead_gib
    return MemoryAccount(
        device_memory=device_memory_gib,
        usable_per_device=usable,
        weights_per_device=weights,
        kv_cache_per_device=kv,
        overhead_per_device=overhead_gib,
        free_per_device=usable - weights - kv,
        weights_total=weights_total,
    )


def candidate_layouts(model: ModelSpec, devices_per_node: int, max_nodes: int) -> list[tuple[int, int]]:
    """(TP, PP) layouts in preference order: fewest nodes first, then fewest devices."""
    tps = tensor_parallel_choices(model, devices_per_node)
    return [(tp, pp) for pp in range(1, min(max_nodes, model.layers) + 1) for tp in tps]


def plan(model: ModelSpec, accelerator: AcceleratorSpec, request: SizingRequest | None = None) -> Plan:
    """Size one replica of ``model`` on ``accelerator``; infeasible plans carry the reason."""
    request = request or SizingRequest()
    devices_per_node = request.devices_per_node or accelerator.devices_per_node
    device_memory = request.device_memory_gib or accelerator.memory_gib
    kv_tokens = max(request.kv_cache_tokens, request.max_model_len or 0)
    backend, backend_note = resolve_backend(accelerator, str(request.backend))
    precision, precision_note = resolve_precision(
        model, accelerator, str(request.precision), backend or Backend.VLLM, request.engine_image
    )
    overhead = (
        request.overhead_gib if request.overhead_gib is not None else RUNTIME_OVERHEAD_GIB[backend or Backend.VLLM]
    )

    def infeasible(reason: str, account: MemoryAccount | None = None) -> Plan:
        return Plan(
            model=model.id,
            accelerator=accelerator.id,
            precision=precision,
            backend=backend,
            feasible=False,
            devices_per_replica=0,
            nodes_per_replica=0,
            devices_per_node=0,
            tensor_parallel=0,
            pipeline_parallel=0,
            max_model_len=0,
            kv_cache_tokens=kv_tokens,
            memory_gib=account or _empty_account(device_memory, request.gpu_memory_utilization, overhead),
            reason=reason,
            precision_note=precision_note if precision is not None else "",
        )

    if backend is None:
        return infeasible(backend_note)
    if precision is None:
        return infeasible(precision_note)
    if request.max_model_len is not None and request.max_model_len > model.max_context:
        return infeasible(f"maxModelLen {request.max_model_len} exceeds {model.id}'s context of {model.max_context}")

    multi_node = request.allow_multi_node and accelerator.multi_node
    max_nodes = request.max_nodes if multi_node else 1

    def account(tp: int, pp: int) -> MemoryAccount:
        return memory_account(
            model, precision, tp, pp, kv_tokens, device_memory, request.gpu_memory_utilization, overhead
        )

    layouts = candidate_layouts(model, devices_per_node, max_nodes)
    if not layouts:
        return infeasible(f"no tensor-parallel size <= {devices_per_node} divides {model.attention_heads} heads")
    if account(1, 1).usable_per_device <= 0:
        return infeasible(
            f"{device_memory:g} GiB x {request.gpu_memory_utilization:g} leaves nothing after "
            f"{overhead:g} GiB runtime overhead",
            account(1, 1),
        )

    tried: dict[tuple[int, int], MemoryAccount] = {}
    for tp, pp in layouts:
        current = tried[(tp, pp)] = account(tp, pp)
        if current.free_per_device >= 0:
            result = _feasible_plan(
                model,
                accelerator,
                precision,
                backend,
                tp,
                pp,
                kv_tokens,
                request,
                current,
                tried,
                precision_note,
            )
            return _with_cheaper_precision_hint(model, accelerator, request, result)
    # Nothing fits: report the largest layout tried, the closest miss.
    tp, pp = layouts[-1]
    largest = tried[(tp, pp)]
    limit = (
        f"{max_nodes} nodes x {devices_per_node}"
        if max_nodes > 1
        else f"1 node x {devices_per_node} (multi-node {'off' if accelerator.multi_node else 'unsupported'})"
    )
    notes = "; ".join(n for n in (precision_note,) if n)
    return infeasible(
        f"{model.id} {precision.value} does not fit in {limit} {accelerator.id}: even TP{tp}"
        f"{f' x PP{pp}' if pp > 1 else ''} needs {largest.weights_per_device:.1f} GiB weights + "
        f"{largest.kv_cache_per_device:.1f} GiB KV ({kv_tokens} tokens) per device, "
        f"{largest.usable_per_device:.1f} GiB usable" + (f"; {notes}" if notes else ""),
        largest,
    )


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


def _feasible_plan(
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    precision: Precision,
    backend: Backend,
    tp: int,
    pp: int,
    kv_tokens: int,
    request: SizingRequest,
    chosen: MemoryAccount,
    tried: dict[tuple[int, int], MemoryAccount],
    precision_note: str,
) -> Plan:
    per_token = kv_bytes_per_token_per_device(model, tp, pp)
    tokens_that_fit = int((chosen.usable_per_device - chosen.weights_per_device) * GIB // per_token)
    max_model_len = request.max_model_len or min(model.max_context, tokens_that_fit)
    where = f"{tp * pp} x {accelerator.id} on {pp} node{'s' if pp > 1 else ''}"
    layout = f"TP{tp}" + (f" x PP{pp}" if pp > 1 else "")
    parts = [
        f"{where} ({layout}, {precision.value}, {backend.value}): {chosen.weights_per_device:.1f} GiB weights + "
        f"{chosen.kv_cache_per_device:.1f} GiB KV ({kv_tokens} tokens) of {chosen.usable_per_device:.1f} GiB usable "
        f"per device"
    ]
    for s_tp, s_pp in _next_smaller_layouts(tp, pp, tried):
        s_account = tried[(s_tp, s_pp)]
        s_layout = f"TP{s_tp}" + (f" x PP{s_pp}" if s_pp > 1 else "")
        parts.append(
            f"{s_layout} would need {s_account.weights_per_device + s_account.kv_cache_per_device:.1f} GiB per device"
        )
    if precision_note:
        parts.append(precision_note)
    return Plan(
        model=model.id,
        accelerator=accelerator.id,
        precision=precision,
        backend=backend,
        feasible=True,
        devices_per_replica=tp * pp,
        nodes_per_replica=pp,
        devices_per_node=tp,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        max_model_len=max_model_len,
        kv_cache_tokens=kv_tokens,
        memory_gib=chosen,
        reason="; ".join(parts),
        precision_note=precision_note,
    )


def _next_smaller_layouts(tp: int, pp: int, tried: dict[tuple[int, int], MemoryAccount]) -> list[tuple[int, int]]:
    """The layouts just below the chosen one: the next smaller TP on as many nodes, the largest on one node fewer."""
    same_nodes = [t for (t, p) in tried if p == pp and t < tp]
    fewer_nodes = [t for (t, p) in tried if p == pp - 1]
    smaller = [(max(same_nodes), pp)] if same_nodes else []
    return smaller + ([(max(fewer_nodes), pp - 1)] if fewer_nodes else [])


def _with_cheaper_precision_hint(
    model: ModelSpec, accelerator: AcceleratorSpec, request: SizingRequest, result: Plan
) -> Plan:
    """When ``auto`` fell back to BF16, say what an 8-bit quantization would need instead."""
    if request.precision != "auto" or result.precision != Precision.BF16 or model.native_precision == Precision.BF16:
        return result
    alternative = plan(model, accelerator, request.model_copy(update={"precision": Precision.W8A8}))
    if not alternative.feasible or alternative.devices_per_replica >= result.devices_per_replica:
        return result
    hint = (
        f"--precision w8a8 needs {alternative.devices_per_replica} devices on "
        f"{alternative.nodes_per_replica} node{'s' if alternative.nodes_per_replica > 1 else ''}"
    )
    return result.model_copy(update={"reason": f"{result.reason}; {hint}"})
