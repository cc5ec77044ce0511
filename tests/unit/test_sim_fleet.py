"""Unit tests for simulated pools: pool files -> fake Node manifests (no cluster needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from dspool.catalog import UnknownIdError, load_catalog
from dspool.sim.apply import adopt_nodes, apply_pool, delete_pool
from dspool.sim.fleet import (
    KWOK_ANNOTATION,
    POOL_LABEL,
    PoolFile,
    load_pool,
    node_manifests,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
POOLS = REPO_ROOT / "examples" / "pools"


def pool_of(*groups: dict[str, Any], **fields: Any) -> PoolFile:
    return PoolFile.model_validate({"name": "unit", "groups": list(groups), **fields})


def by_name(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {node["metadata"]["name"]: node for node in nodes}


def test_nvidia_node_carries_catalog_labels_gpu_capacity_and_the_gpu_taint() -> None:
    (node,) = node_manifests(pool_of({"name": "h200", "count": 1, "accelerator": "h200-141g"}))
    h200 = load_catalog().accelerator("H200-141G")
    labels = node["metadata"]["labels"]
    assert node["metadata"]["name"] == "h200-000"
    assert node["metadata"]["annotations"][KWOK_ANNOTATION] == "fake"
    assert labels.items() >= h200.node_labels(8).items()
    assert labels["type"] == "kwok"
    assert labels["kubernetes.io/hostname"] == "h200-000"
    assert labels["kubernetes.io/arch"] == "amd64"
    assert labels[POOL_LABEL] == "unit"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["status"]["capacity"]["pods"] == "110"


def test_ascend_node_is_arm64_with_the_ascend_resource_and_taint() -> None:
    (node,) = node_manifests(pool_of({"name": "atlas", "count": 1, "accelerator": "Ascend910B3"}))
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/arch"] == "arm64"
    assert labels["node.kubernetes.io/npu.chip.name"] == "910B3"
    assert labels["accelerator"] == "huawei-Ascend910"
    assert node["status"]["capacity"]["huawei.com/Ascend910"] == "8"
    assert node["spec"]["taints"] == [{"key": "huawei.com/Ascend910", "value": "present", "effect": "NoSchedule"}]
    assert node["status"]["nodeInfo"]["architecture"] == "arm64"


def test_ascend_310p_uses_its_own_extended_resource() -> None:
    (node,) = node_manifests(pool_of({"name": "duo", "count": 1, "accelerator": "Ascend310P", "devicesPerNode": 4}))
    assert node["status"]["allocatable"]["huawei.com/Ascend310P"] == "4"
    assert "huawei.com/Ascend910" not in node["status"]["capacity"]


def test_devices_per_node_labels_and_taints_can_be_overridden() -> None:
    group = {
        "name": "rtx",
        "count": 2,
        "accelerator": "RTX4090-24G",
        "devicesPerNode": 4,
        "labels": {"dspool.io/fabric": "rack-b"},
        "taints": [],
        "cpu": 64,
        "memoryGiB": 512,
    }
    nodes = node_manifests(pool_of(group, labels={"dspool.io/site": "lab"}, namePrefix="x-"))
    assert sorted(by_name(nodes)) == ["x-rtx-000", "x-rtx-001"]
    node = nodes[0]
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "4"
    assert node["metadata"]["labels"]["dspool.io/fabric"] == "rack-b"
    assert node["metadata"]["labels"]["dspool.io/site"] == "lab"
    assert node["spec"]["taints"] == []
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert node["status"]["capacity"]["cpu"] == "64"
    assert node["status"]["capacity"]["memory"] == "512Gi"


def test_allocatable_is_below_capacity_for_cpu_and_memory() -> None:
    (node,) = node_manifests(pool_of({"name": "a100", "count": 1, "accelerator": "A100-80G"}))
    capacity, allocatable = node["status"]["capacity"], node["status"]["allocatable"]
    assert int(allocatable["cpu"].removesuffix("m")) < int(capacity["cpu"]) * 1000
    assert int(allocatable["memory"].removesuffix("Mi")) < int(capacity["memory"].removesuffix("Gi")) * 1024


def test_node_manifests_is_pure_and_deterministic() -> None:
    pool = load_pool(POOLS / "enterprise-mixed.yaml")
    assert node_manifests(pool) == node_manifests(pool)


def test_unknown_accelerator_names_the_valid_choices() -> None:
    with pytest.raises(UnknownIdError, match="H200-141G"):
        node_manifests(pool_of({"name": "x", "count": 1, "accelerator": "H9000"}))


def test_pool_file_rejects_unknown_fields_and_bad_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\ngroups:\n  - {name: a, count: 1, accelerator: H100-80G, gpus: 8}\n")
    with pytest.raises(pydantic.ValidationError, match="gpus"):
        load_pool(bad)
    with pytest.raises(pydantic.ValidationError):
        pool_of({"name": "Not_A_DNS_Name", "count": 1, "accelerator": "H100-80G"})


def test_shipped_pools_cover_the_advertised_hardware() -> None:
    mixed = load_pool(POOLS / "enterprise-mixed.yaml")
    accelerators = {group.accelerator for group in mixed.groups}
    assert accelerators == {"H200-141G", "H100-80G", "A100-80G", "L20-48G", "RTX4090-24G", "Ascend910B3"}
    fabrics = {group.labels["dspool.io/fabric"] for group in mixed.groups}
    assert len(fabrics) >= 2
    names = [node["metadata"]["name"] for node in node_manifests(mixed)]
    assert len(names) == len(set(names)) == mixed.node_count
    assert load_pool(POOLS / "small.yaml").node_count == 3


def load_genpool() -> Any:
    spec = importlib.util.spec_from_file_location("genpool", REPO_ROOT / "e2e" / "genpool.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["genpool"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("nodes", [1, 100, 1000, 5000])
def test_generated_pool_has_exactly_the_requested_nodes(nodes: int) -> None:
    genpool = load_genpool()
    document = genpool.generate_pool(nodes, seed=1, name="gen")
    pool = PoolFile.model_validate(yaml.safe_load(yaml.safe_dump(document)))
    assert pool.node_count == nodes
    manifests = node_manifests(pool)
    assert len({node["metadata"]["name"] for node in manifests}) == nodes


def test_generated_pool_is_reproducible_and_mixed() -> None:
    genpool = load_genpool()
    first = genpool.generate_pool(1000, seed=1, name="gen")
    assert first == genpool.generate_pool(1000, seed=1, name="gen")
    assert first != genpool.generate_pool(1000, seed=2, name="gen")
    accelerators = {group["accelerator"] for group in first["groups"]}
    assert {"H200-141G", "Ascend910B3"} <= accelerators


def test_node_names_longer_than_a_hostname_label_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="longer than 63"):
        pool_of({"name": "h" * 30, "count": 1, "accelerator": "H200-141G"}, namePrefix="p" * 29 + "-")


class RecordingCoreV1:
    """Stands in for kubernetes.client.CoreV1Api: records calls, answers like an API server."""

    def __init__(self, existing: tuple[str, ...] = ()) -> None:
        self.existing = set(existing)
        self.calls: list[tuple[str, str, Any]] = []

    def create_node(self, body: dict[str, Any], _preload_content: bool = True) -> Any:
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        self.calls.append(("create", name, body))
        if name in self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.existing.add(name)
        return type("Response", (), {"data": json.dumps(body).encode()})()

    def patch_node(self, name: str, body: dict[str, Any], _preload_content: bool = True) -> None:
        self.calls.append(("patch", name, body))

    def patch_node_status(self, name: str, body: dict[str, Any], _preload_content: bool = True) -> None:
        self.calls.append(("patch_status", name, body))

    def delete_node(self, name: str, _preload_content: bool = True) -> None:
        from kubernetes.client.exceptions import ApiException

        self.calls.append(("delete", name, None))
        if name not in self.existing:
            raise ApiException(status=404, reason="NotFound")
        self.existing.remove(name)


def test_apply_creates_new_nodes_and_patches_existing_ones() -> None:
    pool = load_pool(POOLS / "small.yaml")
    api = RecordingCoreV1(existing=("h200-001",))
    assert apply_pool(api, pool) == 3
    kinds = sorted((kind, name) for kind, name, _ in api.calls)
    assert ("patch", "h200-001") in kinds and ("patch_status", "h200-001") in kinds
    assert ("patch", "h200-000") not in kinds  # created with its status: nothing to patch
    assert delete_pool(api, pool) == 3
    assert delete_pool(api, pool) == 0


def test_adopt_dresses_real_nodes_but_keeps_what_the_kubelet_owns() -> None:
    api = RecordingCoreV1()
    adopt_nodes(api, load_pool(POOLS / "small.yaml"), ["kind-worker"])
    (_, _, labels_patch), (_, _, status_patch) = api.calls
    labels = labels_patch["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert not {"kubernetes.io/hostname", "kubernetes.io/arch", "type"} & labels.keys()
    assert status_patch == {"status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}}
