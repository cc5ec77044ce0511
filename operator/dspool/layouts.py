"""Parallel layouts the serving engines accept: the checks each engine makes at start, as data.

A plan whose layout an engine refuses fails minutes after its pods are scheduled (an assertion while the
model is built), holding its devices until then. Sizing asks :func:`layout_refusals` before it accepts a
layout; each :class:`LayoutRule` names the check, the engine file that makes it and the pinned version, and
docs/sizing.md prints the same table (``dspool plan --rules``). Pure functions of catalog entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from dspool.backends import Backend
from dspool.catalog import ModelSpec, Precision

VLLM_SOURCE_VERSION = "vLLM v0.11.0"
MINDIE_SOURCE_VERSION = "MindIE 2.1.RC1"

ALL_BACKENDS = frozenset(Backend)
VLLM_BACKENDS = frozenset({Backend.VLLM, Backend.VLLM_ASCEND})


class Layout(NamedTuple):
    """How one replica's devices split the model: TP ranks per stage, PP stages, DP ranks, and whether
    the MoE experts are spread over ranks (expert parallelism, EP size = TP x DP as in vLLM). A tuple:
    the planner hashes thousands of them per second."""

    tensor_parallel: int
    pipeline_parallel: int = 1
    data_parallel: int = 1
    expert_parallel: bool = False

    @property
    def devices(self) -> int:
        """Devices the layout occupies."""
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel

    @property
    def expert_parallel_size(self) -> int:
        """Ranks the experts are spread over when expert parallelism is on."""
        return self.tensor_parallel * self.data_parallel

    def describe(self) -> str:
        """``TP8``, ``TP8 x PP2``, ``DP16 x EP16``..."""
        parts = [f"DP{self.data_parallel}"] if self.data_parallel > 1 else []
        if self.tensor_parallel > 1 or not parts:
            parts.append(f"TP{self.tensor_parallel}")
        if self.pipeline_parallel > 1:
            parts.append(f"PP{self.pipeline_parallel}")
        if self.expert_parallel and self.data_parallel > 1:
            parts.append(f"EP{self.expert_parallel_size}")
        return " x ".join(parts)


@dataclass(frozen=True)
class LayoutRule:
    """One check an engine makes on the parallel layout, with where it is made."""

    name: str
    constraint: str
    backends: frozenset[Backend]
    source: str
    check: Callable[[ModelSpec, Precision, Layout], str | None]

    def refusal(self, model: ModelSpec, precision: Precision, layout: Layout) -> str | None:
        """Why the engine refuses ``layout`` for ``model`` under this rule, or None when it accepts it."""
        return self.check(model, precision, layout)


def _attention_heads(model: ModelSpec, _: Precision, layout: Layout) -> str | None:
    if model.attention_heads % layout.tensor_parallel:
        return f"{model.attention_heads} attention heads are not divisible by TP{layout.tensor_parallel}"
    return None


def _kv_heads(model: ModelSpec, _: Precision, layout: Layout) -> str | None:
    if model.attention != "gqa":
        return None
    tp, kv = layout.tensor_parallel, model.kv_heads
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        return f"{kv} KV heads and TP{tp}: neither divides the other"
    return None


def _mlp_width(model: ModelSpec, precision: Precision, layout: Layout) -> str | None:
    tp = layout.tensor_parallel
    if model.intermediate_size is None:
        return None
    if model.intermediate_size % tp:
        return f"the MLP width {model.intermediate_size} is not divisible by TP{tp}"
    block = model.weight_block_size
    if block and _block_quantized(model, precision) and (model.intermediate_size // tp) % block:
        return (
            f"each rank's slice of the MLP ({model.intermediate_size} / {tp} = {model.intermediate_size // tp}) "
            f"is not a multiple of the FP8 block of {block}"
        )
    return None


def _expert_width(model: ModelSpec, precision: Precision, layout: Layout) -> str | None:
    """Routed experts are split by TP unless expert parallelism places whole experts on ranks."""
    if not model.moe or model.moe_intermediate_size is None or layout.expert_parallel:
        return None
    tp, width = layout.tensor_parallel, model.moe_intermediate_size
    if width % tp:
        return f"the expert width {width} is not divisible by TP{tp}"
    block = model.weight_block_size
    if block and _block_quantized(model, precision) and (width // tp) % block:
        return (
            f"each rank's slice of an expert ({width} / {tp} = {width // tp}) is not a multiple of the FP8 "
            f"block of {block}"
        )
    return None


def _experts_per_rank(model: ModelSpec, _: Precision, layout: Layout) -> str | None:
    if not model.moe or model.routed_experts is None or not layout.expert_parallel:
        return None
    ranks = layout.expert_parallel_size
    if model.routed_experts % ranks:
        return f"{model.routed_experts} routed experts do not split evenly over EP{ranks}"
    return None


def _pipeline_stages(model: ModelSpec, _: Precision, layout: Layout) -> str | None:
    if layout.pipeline_parallel > model.layers:
        return f"PP{layout.pipeline_parallel} exceeds the {model.layers} layers"
    return None


def _mindie_world_size(_: ModelSpec, __: Precision, layout: Layout) -> str | None:
    tp = layout.tensor_parallel
    if tp not in (1, 2, 4) and tp % 8:
        return f"MindIE runs 1, 2, 4 or 8 NPUs of a server, or whole 8-NPU servers, not {tp}"
    return None


def _block_quantized(model: ModelSpec, precision: Precision) -> bool:
    """Whether the weights loaded are the checkpoint's block-wise FP8 (native or weight-only)."""
    return model.native_precision == Precision.FP8 and precision in (Precision.FP8, Precision.W8A16)


VLLM_CONFIG = "vllm/config/model.py (ModelConfig.verify_with_parallel_config)"
RULES: tuple[LayoutRule, ...] = (
    LayoutRule(
        "attention-heads",
        "attention heads divisible by TP",
        ALL_BACKENDS,
        f'{VLLM_SOURCE_VERSION} {VLLM_CONFIG}: "Total number of attention heads ({{}}) must be divisible by '
        f'tensor parallel size ({{}})"; MindIE: unverified, assumed the same',
        _attention_heads,
    ),
    LayoutRule(
        "kv-heads",
        "KV heads divisible by TP, or TP divisible by the KV heads (heads replicated)",
        VLLM_BACKENDS,
        f"{VLLM_SOURCE_VERSION} vllm/model_executor/models/qwen2.py and llama.py (the attention's __init__): "
        "assert self.total_num_kv_heads % tp_size == 0 / assert tp_size % self.total_num_kv_heads == 0",
        _kv_heads,
    ),
    LayoutRule(
        "mlp-width",
        "the MLP width divisible by TP; with a block-FP8 checkpoint each slice a multiple of the block",
        VLLM_BACKENDS,
        f"{VLLM_SOURCE_VERSION} vllm/distributed/utils.py divide() via MergedColumnParallelLinear "
        '("{} is not divisible by {}"); vllm/model_executor/layers/quantization/utils/fp8_utils.py '
        'validate_fp8_block_shape ("... is not divisible by weight quantization block_n")',
        _mlp_width,
    ),
    LayoutRule(
        "expert-width",
        "without expert parallelism, each expert's width divisible by TP (and by the FP8 block per slice)",
        VLLM_BACKENDS,
        f"{VLLM_SOURCE_VERSION} vllm/model_executor/layers/fused_moe/layer.py (intermediate_size_per_partition) "
        "and quantization/fp8.py (Fp8MoEMethod.create_weights: \"The output_size of gate's and up's weight = "
        '{} is not divisible by weight quantization block_n = {}")',
        _expert_width,
    ),
    LayoutRule(
        "experts-per-rank",
        "with expert parallelism, the routed experts split evenly over the EP ranks",
        VLLM_BACKENDS,
        "dspool's own rule: vLLM gives the remainder to some ranks (determine_expert_map), which unbalances "
        "them; dspool never plans an uneven split",
        _experts_per_rank,
    ),
    LayoutRule(
        "pipeline-stages",
        "no more pipeline stages than layers",
        ALL_BACKENDS,
        f"{VLLM_SOURCE_VERSION} vllm/distributed/utils.py get_pp_indices (every stage needs a layer)",
        _pipeline_stages,
    ),
    LayoutRule(
        "mindie-world-size",
        "1, 2, 4 or 8 NPUs of one server, or whole 8-NPU servers",
        frozenset({Backend.MINDIE}),
        f"{MINDIE_SOURCE_VERSION}: worldSize / npuDeviceIds per node on Atlas 800I A2 (HCCS groups); unverified "
        "for 3, 5, 6, 7",
        _mindie_world_size,
    ),
)


def layout_refusals(model: ModelSpec, precision: Precision, backend: Backend, layout: Layout) -> list[str]:
    """Why ``backend`` would refuse to start ``model`` in ``layout`` (empty when it accepts it)."""
    refusals = []
    for rule in RULES:
        if backend in rule.backends:
            refusal = rule.refusal(model, precision, layout)
            if refusal is not None:
                refusals.append(refusal)
    return refusals


def rules_table() -> list[dict[str, str]]:
    """The rules as rows (rule, backends, constraint, source), for ``dspool plan --rules`` and the docs."""
    return [
        {
            "rule": rule.name,
            "backends": ", ".join(sorted(b.value for b in rule.backends)),
            "constraint": rule.constraint,
            "source": rule.source,
        }
        for rule in RULES
    ]
