"""The runtime reserve: what a serving engine takes on each device beyond weights and the KV cache.

vLLM v0.11.0 sizes its KV cache at start (``vllm/v1/worker/gpu_worker.py``, ``determine_available_memory``):
KV = total memory x ``gpu_memory_utilization`` - (weights + the peak activation of a profiling run of
``max_num_batched_tokens`` tokens and a sampler pass over ``max_num_seqs`` rows + the growth of non-torch
memory). The CUDA context, NCCL communicators and CUDA graphs are *outside* that budget: they must fit in
total x (1 - utilization). The defaults of ``vllm serve`` (``vllm/engine/arg_utils.py``,
``_set_default_args``): 8192 batched tokens and 1024 sequences on GPUs of 70 GiB or more other than the A100,
else 2048 and 256. docs/sizing.md ("Headroom") gives the sources and the estimates marked unverified.

The activation peak is estimated from the model's shapes: the sampler's FP32 logits (and one copy) over the
full vocabulary, eight hidden-state tensors of the batch, the dense MLP slice, and for MoE models the fused
MoE workspaces (tokens x experts per token x (gate-up + down widths)). It errs on the safe side of the
published profiles (e.g. 0.44 GiB measured for a 14B distill at TP2 on RTX 4090, 1.0 GiB estimated here).
"""

from __future__ import annotations

from dataclasses import dataclass

from dspool.backends import Backend
from dspool.catalog import ModelSpec
from dspool.layouts import Layout

GIB = 1024**3

# vllm/engine/arg_utils.py (_set_default_args), v0.11.0: "For GPUs like H100 and MI300x, use larger default values."
VLLM_LARGE_GPU_GIB = 70
VLLM_LARGE_GPU_BATCH = (8192, 1024)  # max_num_batched_tokens, max_num_seqs for `vllm serve`
VLLM_SMALL_GPU_BATCH = (2048, 256)
# MindIE: dspool's config.json sets maxPrefillTokens 8192 and maxBatchSize 200 (dspool.workloads.mindie).
MINDIE_BATCH = (8192, 200)

NON_TORCH_GIB = 0.5  # cuBLAS/DeepGEMM workspaces grown during profiling (0.15-0.25 GiB measured; kept safe)
ATB_WORKSPACE_GIB = 1.5  # MindIE's ATB operator workspace; unverified, kept from dspool's earlier 3.0 GiB total
HCCL_INSIDE_GIB = 1.0  # vllm-ascend: HCCL buffers allocated inside the NPU budget; unverified
# Outside the budget (unverified estimates, docs/sizing.md): they decide only whether a plan is marginal.
CONTEXT_GIB = 0.6  # CUDA/CANN context per process
COMMUNICATOR_GIB = 0.4  # NCCL/HCCL communicators and custom all-reduce buffers when ranks talk
CUDA_GRAPHS_GIB = 0.5  # piecewise CUDA graphs of v0.11 (captured after the KV cache)
HIDDEN_TENSORS = 8  # hidden-state-sized tensors alive at the peak (residual, norms, attention in/out)
LOGIT_COPIES = 2  # FP32 logits and the probabilities the sampler derives from them
DEFAULT_VOCAB = 152064  # Qwen2.5's, the largest of the distills: used when a catalog entry names none


@dataclass(frozen=True)
class RuntimeReserve:
    """Per-device memory an engine takes besides weights and KV, GiB; ``inside`` counts against the
    utilization budget, ``outside`` must fit in what the budget leaves of the device."""

    activation_gib: float
    workspace_gib: float
    outside_gib: float
    batched_tokens: int
    sequences: int
    override: float | None = None

    @property
    def total_gib(self) -> float:
        """What is taken from device memory x utilization before the KV cache."""
        if self.override is not None:
            return self.override
        return self.activation_gib + self.workspace_gib

    def describe(self) -> str:
        """One line for a plan's reason."""
        if self.override is not None:
            return f"{self.override:.1f} GiB runtime reserve (given)"
        return (
            f"{self.total_gib:.1f} GiB runtime reserve ({self.activation_gib:.1f} activation peak of "
            f"{self.batched_tokens} tokens / {self.sequences} sequences + {self.workspace_gib:.1f} workspaces)"
        )


def engine_batch(backend: Backend, device_memory_gib: float, accelerator_id: str) -> tuple[int, int]:
    """(batched tokens, sequences) the engine profiles with by default on this device."""
    if backend == Backend.MINDIE:
        return MINDIE_BATCH
    large = device_memory_gib >= VLLM_LARGE_GPU_GIB and "a100" not in accelerator_id.lower()
    return VLLM_LARGE_GPU_BATCH if large else VLLM_SMALL_GPU_BATCH


def activation_peak_gib(model: ModelSpec, layout: Layout, tokens: int, sequences: int) -> float:
    """Estimated peak activation of a profiling batch on one device."""
    tp = layout.tensor_parallel
    logits = sequences * (model.vocab_size or DEFAULT_VOCAB) * 4 * LOGIT_COPIES
    hidden = tokens * model.hidden_size * 2 * HIDDEN_TENSORS
    mlp = tokens * 2 * (model.intermediate_size or 4 * model.hidden_size) / tp * 2 * 1.5
    moe = 0.0
    if model.moe and model.moe_intermediate_size:
        width = model.moe_intermediate_size if layout.expert_parallel else model.moe_intermediate_size / tp
        moe = tokens * model.experts_per_token * (2 * width + model.hidden_size) * 2
    return (logits + hidden + mlp + moe) / GIB


def runtime_reserve(
    model: ModelSpec,
    backend: Backend,
    layout: Layout,
    override_gib: float | None = None,
    *,
    device_memory_gib: float = 80.0,
    accelerator_id: str = "",
) -> RuntimeReserve:
    """The reserve of ``backend`` serving ``model`` in ``layout`` on one device (``override_gib`` replaces it)."""
    tokens, sequences = engine_batch(backend, device_memory_gib, accelerator_id)
    workspace = NON_TORCH_GIB
    if backend == Backend.MINDIE:
        workspace += ATB_WORKSPACE_GIB
    elif backend == Backend.VLLM_ASCEND:
        workspace += HCCL_INSIDE_GIB
    ranks = layout.devices
    outside = CONTEXT_GIB + (COMMUNICATOR_GIB if ranks > 1 else 0.0)
    if backend == Backend.VLLM:
        outside += CUDA_GRAPHS_GIB
    return RuntimeReserve(
        activation_gib=activation_peak_gib(model, layout, tokens, sequences),
        workspace_gib=workspace,
        outside_gib=outside,
        batched_tokens=tokens,
        sequences=sequences,
        override=override_gib,
    )
