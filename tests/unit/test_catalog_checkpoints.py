"""The checkpoints people deploy now (issue 22): V3.1, V3.1-Terminus, V3.2-Exp, V3.2; Hugging Face ids; the KV
account per attention variant, checked against the numbers of each model's config.json."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspool.catalog import builtin_catalog
from dspool.cli import main
from dspool.sizing import GIB, Backend, SizingRequest, kv_bytes_per_token, memory_account, plan

CATALOG = builtin_catalog()

# config.json of each Hugging Face repo, the fields the KV account reads (docs/sizing.md cites them), written out
# by hand rather than read from the catalog: num_hidden_layers, and for MLA kv_lora_rank, qk_rope_head_dim and
# (DSA) index_head_dim; for GQA num_key_value_heads and the head dim (hidden_size / num_attention_heads).
V3 = {"num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "max_position_embeddings": 163840}
V32 = {**V3, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}
CONFIG_JSON: dict[str, dict[str, int]] = {
    "deepseek-v3": V3,
    "deepseek-r1": V3,
    "deepseek-v3.1": V3,
    "deepseek-v3.1-terminus": V3,
    "deepseek-v3.2-exp": V32,
    "deepseek-v3.2": V32,
    "deepseek-r1-distill-llama-70b": {"num_hidden_layers": 80, "num_key_value_heads": 8, "head_dim": 128},
    "deepseek-r1-distill-qwen-32b": {"num_hidden_layers": 64, "num_key_value_heads": 8, "head_dim": 128},
    "deepseek-r1-distill-qwen-14b": {"num_hidden_layers": 48, "num_key_value_heads": 8, "head_dim": 128},
    "deepseek-r1-distill-llama-8b": {"num_hidden_layers": 32, "num_key_value_heads": 8, "head_dim": 128},
    "deepseek-r1-distill-qwen-7b": {"num_hidden_layers": 28, "num_key_value_heads": 4, "head_dim": 128},
    "deepseek-r1-distill-qwen-1.5b": {"num_hidden_layers": 28, "num_key_value_heads": 2, "head_dim": 128},
}


def hand_kv_bytes_per_token(config: dict[str, int], backend: str, fp8: bool) -> int:
    """What the engine stores per token over all layers, from config.json's numbers and the engines' formats:
    GQA K+V per KV head; MLA one latent; DSA on vLLM the 656-byte fp8_ds_mla latent (512 FP8 + 4 float32 scales +
    64 BF16 RoPE) and a 132-byte indexer key (128 FP8 + 1 float32 scale); DSA on Ascend both in BF16."""
    layers, element = config["num_hidden_layers"], 1 if fp8 else 2
    if "kv_lora_rank" not in config:
        return layers * 2 * config["num_key_value_heads"] * config["head_dim"] * element
    latent = config["kv_lora_rank"] + config["qk_rope_head_dim"]
    if "index_head_dim" not in config:
        return layers * latent * element
    if backend == "vllm":
        return layers * ((512 + 4 * 4 + 64 * 2) + (128 + 4))
    return layers * (latent * 2 + config["index_head_dim"] * 2)


def test_every_catalog_model_has_its_config_json_written_out() -> None:
    assert sorted(CONFIG_JSON) == sorted(m.id for m in CATALOG.models)


@pytest.mark.parametrize("model_id", sorted(CONFIG_JSON))
@pytest.mark.parametrize("backend", ["vllm", "vllm-ascend", "mindie"])
@pytest.mark.parametrize("fp8", [False, True])
def test_kv_account_equals_the_hand_computation_from_config_json(model_id: str, backend: str, fp8: bool) -> None:
    model, config = CATALOG.model(model_id), CONFIG_JSON[model_id]
    assert model.layers == config["num_hidden_layers"]
    assert model.index_topk == config.get("index_topk") and model.index_n_heads == config.get("index_n_heads")
    expected = hand_kv_bytes_per_token(config, backend, fp8)
    assert kv_bytes_per_token(model, "fp8" if fp8 else "auto", Backend(backend)) == expected


def test_v32_on_vllm_stores_788_bytes_per_token_and_layer_against_1152_for_v3() -> None:
    v32, v3 = CATALOG.model("deepseek-v3.2"), CATALOG.model("deepseek-v3")
    assert kv_bytes_per_token(v32, backend=Backend.VLLM) == 788 * 61 == 48_068
    assert kv_bytes_per_token(v3, backend=Backend.VLLM) == 1152 * 61 == 70_272
    assert kv_bytes_per_token(v32, backend=Backend.VLLM_ASCEND) == (1152 + 256) * 61


@settings(max_examples=200, deadline=None)
@given(
    model_id=st.sampled_from(sorted(CONFIG_JSON)),
    backend=st.sampled_from(["vllm", "vllm-ascend"]),
    tokens=st.integers(min_value=1, max_value=2_000_000),
    tensor_parallel=st.sampled_from([1, 2, 4, 8]),
    pipeline_parallel=st.integers(min_value=1, max_value=4),
)
def test_kv_per_device_is_the_hand_account_split_by_stage_and_kv_heads(
    model_id: str, backend: str, tokens: int, tensor_parallel: int, pipeline_parallel: int
) -> None:
    """Per device: the hand account x the largest stage's share of layers / what TP splits (GQA up to the KV
    heads; MLA never), for tokens rounded up to whole cache blocks (64 for DSA on vLLM)."""
    model, config = CATALOG.model(model_id), CONFIG_JSON[model_id]
    layers = config["num_hidden_layers"]
    split = min(tensor_parallel, config["num_key_value_heads"]) if "num_key_value_heads" in config else 1
    block = 64 if "index_head_dim" in config and backend == "vllm" else 1
    stored = math.ceil(tokens / block) * block
    stage_layers = math.ceil(layers / pipeline_parallel)
    expected = stored * hand_kv_bytes_per_token(config, backend, False) * stage_layers / (layers * split * GIB)
    account = memory_account(
        model, model.native_precision, tensor_parallel, pipeline_parallel, tokens, 140.0, 0.9, 3.0,
        backend=Backend(backend),
    )  # fmt: skip
    assert account.kv_cache_per_device == pytest.approx(expected, rel=1e-9)


def test_hugging_face_repo_ids_name_catalog_entries() -> None:
    assert CATALOG.model("deepseek-ai/DeepSeek-R1-0528").id == "deepseek-r1-0528"
    assert CATALOG.model("deepseek-ai/DeepSeek-R1-0528").alias_of == "deepseek-r1"
    assert CATALOG.model("DeepSeek-AI/deepseek-v3.2").id == "deepseek-v3.2"
    assert CATALOG.model("deepseek-ai/DeepSeek-V3.1-Terminus").hf_id == "deepseek-ai/DeepSeek-V3.1-Terminus"


def test_dspool_models_lists_the_new_checkpoints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for model_id in ("deepseek-v3.1 ", "deepseek-v3.1-terminus", "deepseek-v3.2-exp", "deepseek-v3.2 "):
        assert model_id in out
    assert "deepseek-r1-distill-qwen-1.5b" in out  # the distills stay


def test_v31_plans_exactly_like_v3() -> None:
    """V3.1 and Terminus keep V3's shapes and checkpoint size: the same plan everywhere."""
    for accelerator_id in ("H200-141G", "H100-80G", "A100-80G", "Ascend910B3"):
        accelerator = CATALOG.accelerator(accelerator_id)
        base = plan(CATALOG.model("deepseek-v3"), accelerator)
        for model_id in ("deepseek-v3.1", "deepseek-v3.1-terminus"):
            later = plan(CATALOG.model(model_id), accelerator)
            assert (later.devices_per_replica, later.layout, later.precision) == (
                base.devices_per_replica,
                base.layout,
                base.precision,
            )
            assert later.memory_gib == base.memory_gib


@pytest.mark.parametrize("model_id", ["deepseek-v3.2-exp", "deepseek-v3.2"])
def test_v32_plans_on_the_four_accelerators_are_sized_and_explained(model_id: str) -> None:
    model = CATALOG.model(model_id)
    h200 = plan(model, CATALOG.accelerator("H200-141G"))
    assert (h200.feasible, h200.devices_per_replica, h200.layout, h200.backend) == (True, 8, "TP8", "vllm")
    # 32768 tokens x 788 B x 61 layers, on every TP rank (the latent has one head)
    assert h200.memory_gib.kv_cache_per_device == pytest.approx(32768 * 788 * 61 / GIB, abs=0.01)
    # the indexer (0.85B, replicated) makes each rank's weights 0.9 GiB heavier than V3's 79.3
    assert h200.memory_gib.weights_per_device == pytest.approx(80.2, abs=0.05)
    h100 = plan(model, CATALOG.accelerator("H100-80G"))
    assert (h100.feasible, h100.devices_per_replica, h100.nodes_per_replica) == (True, 16, 2)
    a100 = plan(model, CATALOG.accelerator("A100-80G"))
    assert not a100.feasible and "Hopper and Blackwell only" in a100.reason and "8.0" in a100.reason
    ascend = plan(model, CATALOG.accelerator("Ascend910B3"))
    # MindIE 2.1.RC1 (the default image) predates V3.2: auto takes vllm-ascend and says why
    assert (ascend.feasible, ascend.backend, ascend.devices_per_replica) == (True, "vllm-ascend", 32)
    assert "MindIE v2.1.0" in ascend.reason and "vllm-ascend serves it" in ascend.reason
    w8a8 = plan(model, CATALOG.accelerator("Ascend910B3"), SizingRequest(precision="w8a8"))
    assert (w8a8.devices_per_replica, w8a8.nodes_per_replica) == (16, 2)  # vllm-ascend's tutorial: 2 x Atlas 800 A2


def test_v32_on_h200_fits_a_longer_context_than_v3_for_the_same_memory() -> None:
    """The FP8 latent + indexer key is 788 B per token and layer against V3's 1152: more tokens per GiB."""
    request = SizingRequest(kv_cache_tokens=1_000_000)
    v3 = plan(CATALOG.model("deepseek-v3"), CATALOG.accelerator("H200-141G"), request)
    v32 = plan(CATALOG.model("deepseek-v3.2"), CATALOG.accelerator("H200-141G"), request)
    assert v32.memory_gib.kv_cache_per_device < v3.memory_gib.kv_cache_per_device * 0.7
