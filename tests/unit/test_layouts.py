"""Plans the engines accept: layouts, headroom, serving modes (issue: plans the engines accept)."""

from __future__ import annotations

import pytest

from dspool.catalog import Precision, builtin_catalog
from dspool.layouts import rules_table
from dspool.sizing import GIB, SizingRequest, plan

CATALOG = builtin_catalog()

# What each backend accepts, written out by hand from the engines' checks (docs/sizing.md), not computed by
# dspool's rule code: the TP sizes vLLM v0.11.0 starts each model with on 8-device servers.
VLLM_TP_ACCEPTED = {
    "deepseek-r1": {1, 2, 4, 8},  # 128 heads; MLP 18432 / TP multiple of 128
    "deepseek-v3": {1, 2, 4, 8},
    "deepseek-v3.1": {1, 2, 4, 8},  # V3's shapes
    "deepseek-v3.1-terminus": {1, 2, 4, 8},
    "deepseek-v3.2-exp": {1, 2, 4, 8},  # V3's shapes; the indexer is replicated, not split
    "deepseek-v3.2": {1, 2, 4, 8},
    "deepseek-r1-distill-llama-70b": {1, 2, 4, 8},  # 64 heads, 8 KV heads
    "deepseek-r1-distill-qwen-32b": {1, 2, 4, 8},  # 40 heads, 8 KV heads, MLP 27648: not 5
    "deepseek-r1-distill-qwen-14b": {1, 2, 4, 8},  # 40 heads, 8 KV heads: not 5
    "deepseek-r1-distill-llama-8b": {1, 2, 4, 8},
    "deepseek-r1-distill-qwen-7b": {1, 2, 4},  # 28 heads, 4 KV heads: not 7
    "deepseek-r1-distill-qwen-1.5b": {1, 2, 4},  # 12 heads, 2 KV heads, MLP 8960: not 3, not 6
}
MINDIE_TP_ACCEPTED = {1, 2, 4, 8, 16, 24, 32}


@pytest.mark.parametrize("model_id", [m.id for m in CATALOG.models])
@pytest.mark.parametrize("accelerator_id", CATALOG.accelerator_ids)
@pytest.mark.parametrize("precision", ["auto", "fp8", "bf16", "w8a8", "w8a16"])
@pytest.mark.parametrize("kv_tokens", [4096, 32768, 300_000, 1_500_000])
def test_every_feasible_plan_has_a_layout_its_backend_accepts(
    model_id: str, accelerator_id: str, precision: str, kv_tokens: int
) -> None:
    model, accelerator = CATALOG.model(model_id), CATALOG.accelerator(accelerator_id)
    for backend in ("auto", "vllm-ascend") if accelerator.vendor == "ascend" else ("auto",):
        result = plan(
            model, accelerator, SizingRequest(precision=precision, backend=backend, kv_cache_tokens=kv_tokens)
        )
        if not result.feasible:
            continue
        if result.backend == "mindie":
            assert result.tensor_parallel in MINDIE_TP_ACCEPTED and result.pipeline_parallel == 1
            assert result.nodes_per_replica <= 4 and result.devices_per_replica <= 32  # MindIE: 4 nodes / 32 cards
        else:
            assert result.tensor_parallel in VLLM_TP_ACCEPTED[model_id], result.reason


def test_32b_on_rtx4090_with_a_large_kv_budget_gets_tp8_not_tp5() -> None:
    result = plan(
        CATALOG.model("deepseek-r1-distill-qwen-32b"),
        CATALOG.accelerator("RTX4090-24G"),
        SizingRequest(kv_cache_tokens=100000),
    )
    assert (result.tensor_parallel, result.nodes_per_replica) == (8, 1)
    assert "vllm refuses the smaller layouts that would fit: TP5 (8 KV heads and TP5: neither divides" in result.reason


def test_r1_on_h20_96g_takes_two_nodes_because_one_is_marginal() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H20-96G"))
    assert (result.devices_per_replica, result.nodes_per_replica) == (16, 2) and not result.marginal
    assert "not taken as marginal: TP8 (0.7 GiB left per device" in result.reason
    assert "gpuMemoryUtilization 0.95 or --accept-marginal takes TP8" in result.reason
    # The same node with the engine given 95% of memory (or fp8 KV plus accept) holds it with room.
    roomy = plan(
        CATALOG.model("deepseek-r1"), CATALOG.accelerator("H20-96G"), SizingRequest(gpu_memory_utilization=0.95)
    )
    assert (roomy.devices_per_replica, roomy.nodes_per_replica, roomy.marginal) == (8, 1, False)
    forced = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H20-96G"), SizingRequest(accept_marginal=True))
    assert forced.nodes_per_replica == 1 and forced.marginal and "taken as asked" in forced.reason


def test_weights_per_device_match_vllms_logged_79_4_gib_for_r1_at_tp8() -> None:
    # vllm-fork#809: "Pre-loading model weights ... took 79.41 GiB" for DeepSeek-R1 FP8 at TP8.
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("H200-141G"))
    assert result.memory_gib.weights_per_device == pytest.approx(79.4, abs=0.3)


def test_mindie_runs_two_servers_as_tp16_and_every_npu_holds_the_whole_mla_cache() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("Ascend910B3"), SizingRequest(precision="w8a8"))
    assert (result.tensor_parallel, result.pipeline_parallel, result.nodes_per_replica) == (16, 1, 2)
    full_cache = 32768 * CATALOG.model("deepseek-r1").kv_bytes_per_token / GIB
    assert result.memory_gib.kv_cache_per_device == pytest.approx(full_cache)


def test_mindie_never_spans_more_than_four_servers() -> None:
    result = plan(CATALOG.model("deepseek-r1"), CATALOG.accelerator("Ascend910B4"))
    assert not result.feasible and "mindie's limit per instance" in result.reason
    assert "TP32" in result.reason


def test_fp8_kv_cache_halves_the_kv_and_is_refused_where_the_engine_has_none() -> None:
    r1, h200 = CATALOG.model("deepseek-r1"), CATALOG.accelerator("H200-141G")
    base, fp8 = plan(r1, h200), plan(r1, h200, SizingRequest(kv_cache_dtype="fp8"))
    assert fp8.memory_gib.kv_cache_per_device == pytest.approx(base.memory_gib.kv_cache_per_device / 2)
    ampere = plan(r1, CATALOG.accelerator("A100-80G"), SizingRequest(kv_cache_dtype="fp8"))
    assert not ampere.feasible and "Triton MLA" in ampere.reason
    mindie = plan(r1, CATALOG.accelerator("Ascend910B3"), SizingRequest(kv_cache_dtype="fp8", precision="w8a8"))
    assert not mindie.feasible and "MindIE has no FP8 KV cache" in mindie.reason


def test_mtp_adds_the_mtp_module_and_needs_a_model_that_has_one() -> None:
    r1, h200 = CATALOG.model("deepseek-r1"), CATALOG.accelerator("H200-141G")
    base, mtp = plan(r1, h200), plan(r1, h200, SizingRequest(speculative_tokens=1))
    extra = mtp.memory_gib.weights_per_device - base.memory_gib.weights_per_device
    assert extra == pytest.approx(641 * 14 / 685 / 8, rel=0.01)  # the 14B module's share, split over TP8
    distill = plan(CATALOG.model("deepseek-r1-distill-qwen-7b"), h200, SizingRequest(speculative_tokens=1))
    assert not distill.feasible and "no multi-token-prediction module" in distill.reason


def test_data_expert_parallelism_holds_one_kv_share_per_rank_and_replicates_attention() -> None:
    r1, h200 = CATALOG.model("deepseek-r1"), CATALOG.accelerator("H200-141G")
    tensor = plan(r1, h200, SizingRequest(kv_cache_tokens=262144))
    data = plan(r1, h200, SizingRequest(kv_cache_tokens=262144, parallelism="data-expert"))
    assert data.layout == "DP8 x EP8" and (data.tensor_parallel, data.data_parallel) == (1, 8)
    # one MLA cache per rank, each caching its own requests: an eighth of the tokens per device
    assert data.memory_gib.kv_cache_per_device == pytest.approx(tensor.memory_gib.kv_cache_per_device / 8)
    assert data.memory_gib.weights_per_device > tensor.memory_gib.weights_per_device  # attention replicated
    dense = plan(CATALOG.model("deepseek-r1-distill-llama-70b"), h200, SizingRequest(parallelism="data-expert"))
    assert not dense.feasible and "MoE" in dense.reason


def test_every_rule_names_its_source_and_version() -> None:
    for row in rules_table():
        assert row["source"] and row["constraint"] and row["backends"]
        assert "v0.11.0" in row["source"] or "MindIE" in row["source"] or "dspool" in row["source"]


def test_precision_w8a8_on_ascend_is_unchanged_and_bf16_distills_still_plan() -> None:
    result = plan(CATALOG.model("deepseek-r1-distill-qwen-32b"), CATALOG.accelerator("Ascend910B4"))
    assert result.feasible and result.precision == Precision.BF16 and result.tensor_parallel in (4, 8)
