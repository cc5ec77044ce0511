"""The sizing planner's rules and worked outcomes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspool.api import DeepSeekDeploymentSpec
from dspool.catalog import Precision, Vendor, builtin_catalog
from dspool.headroom import runtime_reserve
from dspool.layouts import layout_refusals
from dspool.sizing import (
    VLLM_FP8_MARLIN_MIN_VERSION,
    Backend,
    SizingRequest,
    candidate_layouts,
    image_version,
    is_marginal,
    memory_account,
    plan,
)
from dspool.workloads import DEFAULT_IMAGES

CATALOG = builtin_catalog()
MODEL_IDS = [m.id for m in CATALOG.models]
ACCELERATOR_IDS = CATALOG.accelerator_ids


def plan_for(model: str, accelerator: str, **request: object) -> object:
    return plan(CATALOG.model(model), CATALOG.accelerator(accelerator), SizingRequest(**request))


def test_r1_on_h200_is_fp8_on_one_node_of_eight() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H200-141G"))
    assert result.feasible
    assert (result.precision, result.devices_per_replica, result.nodes_per_replica) == (Precision.FP8, 8, 1)
    assert (result.tensor_parallel, result.pipeline_parallel) == (8, 1)


def test_r1_on_h100_is_fp8_tp8_by_pp2_over_two_nodes() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H100-80G"))
    assert result.feasible
    assert (result.precision, result.devices_per_replica, result.nodes_per_replica) == (Precision.FP8, 16, 2)
    assert (result.tensor_parallel, result.pipeline_parallel) == (8, 2)
    assert "TP8 would need" in result.reason  # says why one node is not enough


@pytest.mark.parametrize("model", ["deepseek-r1", "deepseek-v3"])
@pytest.mark.parametrize("accelerator", ["A100-80G", "A800-80G"])
def test_fp8_checkpoints_on_ampere_run_weight_only_on_two_nodes_not_bf16_on_three(model: str, accelerator: str) -> None:
    result = plan(CATALOG.model(model), CATALOG.accelerator(accelerator))
    assert result.precision == Precision.W8A16
    assert (result.devices_per_replica, result.nodes_per_replica) == (16, 2)
    assert (result.tensor_parallel, result.pipeline_parallel) == (8, 2)
    # the published FP8 checkpoint less its MTP module (641 x 671/685), not 1276 GiB of BF16
    assert result.memory_gib.weights_total == pytest.approx(641 * 671 / 685)
    assert "weight-only" in result.reason and "Marlin" in result.reason and "prefill slower" in result.reason
    assert "converted" not in result.precision_note.split(";")[0]


def test_bf16_on_ampere_is_still_the_converted_path_on_three_nodes() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("A100-80G"), SizingRequest(precision="bf16"))
    assert result.precision == Precision.BF16
    assert (result.devices_per_replica, result.nodes_per_replica) == (24, 3)
    assert result.memory_gib.weights_total == pytest.approx(1276 * 671 / 685)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("vllm/vllm-openai:v0.8.5", Precision.BF16),
        ("registry.example:5000/mirror/vllm/vllm-openai:v0.11.0", Precision.W8A16),
        ("vllm/vllm-openai:latest", Precision.W8A16),
        ("vllm/vllm-openai@sha256:" + "a" * 64, Precision.W8A16),
    ],
)
def test_a_pinned_vllm_image_decides_whether_ampere_runs_fp8_weight_only(image: str, expected: Precision) -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("A100-80G"), SizingRequest(engine_image=image))
    assert result.precision == expected
    if expected == Precision.BF16:
        assert result.devices_per_replica == 24
        assert "v0.8.5, older than" in result.reason and "converted to BF16" in result.reason
    elif image_version(image) is None:
        assert f"assumed {image} is vLLM >=" in result.reason


def test_explicit_w8a16_on_an_old_vllm_image_is_refused_with_the_reason() -> None:
    request = SizingRequest(precision="w8a16", engine_image="vllm/vllm-openai:v0.7.3")
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("A100-80G"), request)
    assert not result.feasible and "v0.7.3, older than" in result.reason


def test_dspools_default_vllm_image_has_the_marlin_fp8_paths() -> None:
    version = image_version(DEFAULT_IMAGES.vllm)
    assert version is not None and version >= VLLM_FP8_MARLIN_MIN_VERSION


@pytest.mark.parametrize("accelerator", ["Ascend910B3", "Ascend910B4"])
def test_ascend_has_no_fp8_weight_path_and_stays_bf16(accelerator: str) -> None:
    for backend in ("mindie", "vllm-ascend"):
        result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator(accelerator), SizingRequest(backend=backend))
        assert result.precision == Precision.BF16, backend
        assert f"{backend} has no FP8 weight path" in result.precision_note


def test_distills_on_ampere_are_unchanged_bf16() -> None:
    for model in CATALOG.models:
        if model.native_precision == Precision.BF16:
            result = plan(model, CATALOG.accelerator("A100-80G"))
            assert result.precision == Precision.BF16 and result.precision_note == ""


def test_r1_w8a8_on_atlas_800i_a2_is_two_servers_and_auto_hints_at_it() -> None:
    w8a8 = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("Ascend910B3"), SizingRequest(precision="w8a8"))
    assert (w8a8.devices_per_replica, w8a8.nodes_per_replica, w8a8.backend) == (16, 2, "mindie")
    auto = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("Ascend910B3"))
    assert auto.precision == Precision.BF16 and auto.devices_per_replica == 32
    assert "--precision w8a8 needs 16 devices on 2 nodes" in auto.reason


def test_fp8_on_ampere_is_infeasible_with_a_reason() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("A100-80G"), SizingRequest(precision="fp8"))
    assert not result.feasible
    assert "8.9" in result.reason and "bf16" in result.reason


def test_mindie_on_nvidia_is_infeasible_with_a_reason() -> None:
    result = plan(
        CATALOG.model("deepseek-r1-distill-qwen-7b"), CATALOG.accelerator("H100-80G"), SizingRequest(backend="mindie")
    )
    assert not result.feasible and "vllm" in result.reason


def test_qwen7b_never_gets_tp7_or_tp8_because_28_heads_and_4_kv_heads() -> None:
    # A KV budget so large that TP4 overflows: TP7 divides the 28 heads but not the 4 KV heads (vLLM asserts),
    # TP8 does not divide the heads; the next layout is two nodes.
    tiny = plan(
        CATALOG.model("deepseek-r1-distill-qwen-7b"),
        CATALOG.accelerator("RTX4090-24G"),
        SizingRequest(kv_cache_tokens=1_220_000),
    )
    assert tiny.feasible and tiny.tensor_parallel not in (3, 5, 6, 7, 8)
    assert tiny.nodes_per_replica == 2
    assert "TP7 (4 KV heads and TP7: neither divides the other)" in tiny.reason


def test_vendor_table_errors_are_corrected() -> None:
    # The article: 14B on 1 x RTX 4090 24G (weights alone are 27.5 GiB); 70B on 8 x L20 (4 suffice).
    assert (
        plan(CATALOG.model("deepseek-r1-distill-qwen-14b"), CATALOG.accelerator("RTX4090-24G")).devices_per_replica == 2
    )
    assert plan(CATALOG.model("deepseek-r1-distill-llama-70b"), CATALOG.accelerator("L20-48G")).devices_per_replica == 4


def test_310p_never_spans_nodes() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("Ascend310P"))
    assert not result.feasible and "multi-node unsupported" in result.reason


def test_single_node_request_refuses_multi_node_plans() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H100-80G"), SizingRequest(allow_multi_node=False))
    assert not result.feasible and "multi-node off" in result.reason


def test_max_model_len_is_bounded_by_context_and_by_memory() -> None:
    roomy = plan(CATALOG.model("deepseek-r1-distill-qwen-1.5b"), CATALOG.accelerator("H200-141G"))
    assert roomy.max_model_len == 131072
    tight = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H20-96G"), SizingRequest(accept_marginal=True))
    assert 32768 <= tight.max_model_len < 163840 and tight.marginal


def test_mla_cache_is_replicated_per_tp_rank_and_gqa_is_split() -> None:
    r1, llama = CATALOG.model("deepseek-r1"), CATALOG.model("deepseek-r1-distill-llama-70b")
    args = dict(kv_tokens=32768, device_memory_gib=80, utilization=0.9, overhead_gib=2.5)
    mla_tp1 = memory_account(r1, Precision.FP8, 1, 1, **args).kv_cache_per_device  # type: ignore[arg-type]
    mla_tp8 = memory_account(r1, Precision.FP8, 8, 1, **args).kv_cache_per_device  # type: ignore[arg-type]
    assert mla_tp1 == mla_tp8 == pytest.approx(32768 * 70272 / 1024**3)
    gqa_tp1 = memory_account(llama, Precision.BF16, 1, 1, **args).kv_cache_per_device  # type: ignore[arg-type]
    gqa_tp8 = memory_account(llama, Precision.BF16, 8, 1, **args).kv_cache_per_device  # type: ignore[arg-type]
    assert gqa_tp8 == pytest.approx(gqa_tp1 / 8)


requests = st.builds(
    SizingRequest,
    precision=st.sampled_from(["auto", "fp8", "bf16", "w8a8", "w8a16"]),
    kv_cache_tokens=st.integers(1, 400_000),
    gpu_memory_utilization=st.floats(0.5, 0.98),
    max_nodes=st.integers(1, 8),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MODEL_IDS), st.sampled_from(ACCELERATOR_IDS), requests)
def test_feasible_plans_fit_and_are_minimal(model_id: str, accelerator_id: str, request: SizingRequest) -> None:
    model, accelerator = CATALOG.model(model_id), CATALOG.accelerator(accelerator_id)
    result = plan(model, accelerator, request)
    mem = result.memory_gib
    if not result.feasible:
        return
    # the account never exceeds usable memory
    assert mem.weights_per_device + mem.kv_cache_per_device <= mem.usable_per_device + 1e-9
    assert (
        mem.usable_per_device + mem.overhead_per_device
        <= accelerator.memory_gib * request.gpu_memory_utilization + 1e-9
    )
    # TP divides the head count and stays in one node (vLLM); MindIE spans whole servers
    assert model.attention_heads % result.tensor_parallel == 0
    assert result.devices_per_node <= accelerator.devices_per_node
    assert result.devices_per_replica == result.tensor_parallel * result.pipeline_parallel
    # every layout earlier in preference order (fewer nodes, or fewer devices on as many nodes) that the
    # engine accepts does not fit, or fits only marginally when the chosen one is not marginal
    if result.backend != Backend.VLLM:
        return
    layouts = candidate_layouts(model, accelerator.devices_per_node, request.max_nodes)
    chosen = layouts.index(result.shape)
    assert result.precision is not None
    for layout in layouts[:chosen]:
        if layout_refusals(model, result.precision, result.backend, layout):
            continue
        smaller = memory_account(
            model,
            result.precision,
            layout.tensor_parallel,
            layout.pipeline_parallel,
            result.kv_cache_tokens,
            accelerator.memory_gib,
            request.gpu_memory_utilization,
            runtime_reserve(
                model, result.backend, layout, device_memory_gib=accelerator.memory_gib, accelerator_id=accelerator.id
            ).total_gib,
        )
        assert smaller.free_per_device < 0 or (is_marginal(smaller) and not result.marginal), (
            f"{layout.describe()} would have fit"
        )


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(MODEL_IDS),
    st.sampled_from(ACCELERATOR_IDS),
    st.floats(8, 200),
    st.floats(1, 80),
    st.integers(1, 200_000),
)
def test_more_memory_never_needs_more_nodes_or_devices(
    model_id: str, accelerator_id: str, memory: float, extra: float, kv_tokens: int
) -> None:
    model, accelerator = CATALOG.model(model_id), CATALOG.accelerator(accelerator_id)
    small = plan(model, accelerator, SizingRequest(device_memory_gib=memory, kv_cache_tokens=kv_tokens))
    big = plan(model, accelerator, SizingRequest(device_memory_gib=memory + extra, kv_cache_tokens=kv_tokens))
    if small.feasible:
        assert big.feasible
        assert big.nodes_per_replica <= small.nodes_per_replica
        if big.nodes_per_replica == small.nodes_per_replica:
            assert big.devices_per_replica <= small.devices_per_replica


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MODEL_IDS), st.sampled_from(ACCELERATOR_IDS), requests)
def test_fp8_is_never_planned_on_ampere_or_ascend(model_id: str, accelerator_id: str, request: SizingRequest) -> None:
    accelerator = CATALOG.accelerator(accelerator_id)
    result = plan(CATALOG.model(model_id), accelerator, request)
    if accelerator.vendor == Vendor.ASCEND or accelerator.architecture == "ampere":
        assert result.precision != Precision.FP8
        assert not result.feasible or result.precision in (Precision.BF16, Precision.W8A8, Precision.W8A16)
    if request.precision == "auto" and result.precision == Precision.W8A16:
        # auto picks weight-only FP8 only where vLLM's Marlin path runs it: an FP8 checkpoint on NVIDIA without FP8
        assert accelerator.vendor == Vendor.NVIDIA and not accelerator.fp8 and result.backend == "vllm"
        assert CATALOG.model(model_id).native_precision == Precision.FP8


def test_a_spec_without_a_memory_utilization_is_sized_with_what_its_engine_is_given() -> None:
    spec = DeepSeekDeploymentSpec.model_validate({"model": "deepseek-r1"})
    assert spec.serving.gpu_memory_utilization == SizingRequest().gpu_memory_utilization == 0.9
