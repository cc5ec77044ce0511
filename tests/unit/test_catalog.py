"""The catalog: lookups, node matching, and user overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspool.catalog import CatalogError, UnknownIdError, builtin_catalog, load_catalog

CATALOG = builtin_catalog()


def test_every_issue_listed_model_and_accelerator_is_present() -> None:
    for model_id in [
        "deepseek-v3",
        "deepseek-r1",
        "deepseek-v3-0324",
        "deepseek-r1-0528",
        "deepseek-r1-distill-llama-70b",
        "deepseek-r1-distill-qwen-32b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-llama-8b",
        "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-qwen-1.5b",
    ]:
        CATALOG.model(model_id)
    assert set(CATALOG.accelerator_ids) >= {
        "A100-40G",
        "A100-80G",
        "A800-80G",
        "H100-80G",
        "H800-80G",
        "H200-141G",
        "H20-96G",
        "H20-141G",
        "L20-48G",
        "L40S-48G",
        "RTX4090-24G",
        "RTX4090-48G",
        "B200-180G",
        "Ascend910B1",
        "Ascend910B2",
        "Ascend910B3",
        "Ascend910B4",
        "Ascend310P",
    }


def test_ids_match_case_insensitively_and_aliases_keep_their_hf_id() -> None:
    assert CATALOG.accelerator("h200-141g").id == "H200-141G"
    alias = CATALOG.model("DeepSeek-R1-0528")
    assert alias.hf_id == "deepseek-ai/DeepSeek-R1-0528" and alias.alias_of == "deepseek-r1" and alias.layers == 61


def test_unknown_id_names_the_valid_choices() -> None:
    with pytest.raises(UnknownIdError, match="valid accelerators: A100-40G"):
        CATALOG.accelerator("V100")


def test_fp8_follows_compute_capability() -> None:
    assert CATALOG.accelerator("RTX4090-24G").fp8  # Ada 8.9 has FP8, whatever the vendor article says
    assert not CATALOG.accelerator("A100-80G").fp8
    assert not CATALOG.accelerator("Ascend910B3").fp8


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "H100-80G"),
        ({"nvidia.com/gpu.product": "NVIDIA-H200-SHARED"}, "H200-141G"),
        ({"nvidia.com/gpu.product": "NVIDIA-H20", "nvidia.com/gpu.memory": "97871"}, "H20-96G"),
        ({"nvidia.com/gpu.product": "NVIDIA-H20", "nvidia.com/gpu.memory": "143771"}, "H20-141G"),
        ({"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090", "nvidia.com/gpu.memory": "49140"}, "RTX4090-48G"),
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, "A100-40G"),
        ({"accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": "910B3"}, "Ascend910B3"),
        ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "dspool.io/accelerator": "h800-80g"}, "H800-80G"),
        ({"nvidia.com/gpu.product": "Tesla-V100"}, None),
    ],
)
def test_nodes_are_identified_from_their_labels(labels: dict[str, str], expected: str | None) -> None:
    found = CATALOG.identify_node(labels)
    assert (found.id if found else None) == expected


def test_generated_node_labels_identify_the_same_accelerator() -> None:
    for accelerator in CATALOG.accelerators:
        found = CATALOG.identify_node(accelerator.node_labels())
        assert found is not None and found.id == accelerator.id, accelerator.id


def test_user_file_overrides_fields_and_adds_entries(tmp_path: Path) -> None:
    extra = tmp_path / "catalog.yaml"
    extra.write_text(
        "accelerators:\n"
        "  - {id: h100-80g, devicesPerNode: 4}\n"
        "  - {id: RTX5090-32G, vendor: nvidia, architecture: blackwell, computeCapability: '12.0', memoryGiB: 32,\n"
        "     productPattern: '^NVIDIA-GeForce-RTX-5090', gfdProduct: NVIDIA-GeForce-RTX-5090}\n"
    )
    catalog = load_catalog(extra)
    assert catalog.accelerator("H100-80G").devices_per_node == 4
    assert catalog.accelerator("H100-80G").memory_gib == CATALOG.accelerator("H100-80G").memory_gib
    assert catalog.accelerator("rtx5090-32g").fp8


def test_bad_user_file_is_a_clear_error(tmp_path: Path) -> None:
    extra = tmp_path / "catalog.yaml"
    extra.write_text("accelerators:\n  - {id: X1, vendor: intel, memoryGiB: 8}\n")
    with pytest.raises(CatalogError, match="vendor"):
        load_catalog(extra)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")


# Ascend servers as they report themselves (docs/sizing.md, "Ascend as the servers report it").
CHIP = "node.kubernetes.io/npu.chip.name"


@pytest.mark.parametrize(
    ("labels", "expected", "memory_gib"),
    [
        ({CHIP: "910B4"}, "Ascend910B4", 32),  # no memory label: the 32 GB part, never more than is there
        ({CHIP: "910B4", "mind-cluster/npu-chip-memory": "32G"}, "Ascend910B4", 32),
        ({CHIP: "910B4", "mind-cluster/npu-chip-memory": "64G"}, "Ascend910B4-64G", 64),
        ({CHIP: "910B4-1"}, "Ascend910B4-64G", 64),  # the 64 GB Atlas 800I A2's chip name
        ({CHIP: "910B2C"}, "Ascend910B2", 64),
        ({CHIP: "310P3"}, "Ascend310P-24G", 24),  # 300I Pro, or a 310P whose card nothing reports
        ({CHIP: "310P3", "infer-card-type": "card-300i-duo"}, "Ascend310P", 48),  # MindCluster's Duo label
        ({CHIP: "310P3", "dspool.io/device-memory-gib": "48"}, "Ascend310P", 48),  # the site says so
    ],
)
def test_ascend_nodes_are_told_apart_by_chip_name_and_the_memory_they_report(
    labels: dict[str, str], expected: str, memory_gib: int
) -> None:
    accelerator = CATALOG.identify_node(labels)
    assert accelerator is not None and accelerator.id == expected
    assert accelerator.memory_gib == memory_gib


def test_reported_memory_prefers_the_site_then_gfd_then_mindcluster() -> None:
    from dspool.catalog import reported_memory_mib

    assert reported_memory_mib({"mind-cluster/npu-chip-memory": "64G"}) == 65536
    assert reported_memory_mib({"nvidia.com/gpu.memory": "81559"}) == 81559
    assert reported_memory_mib({"dspool.io/device-memory-gib": "47.5", "nvidia.com/gpu.memory": "1"}) == 48640
    assert reported_memory_mib({"mind-cluster/npu-chip-memory": "lots"}) is None
