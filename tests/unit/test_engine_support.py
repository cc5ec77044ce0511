"""Engine support by version (issue 22): an image too old for a checkpoint is refused, in sizing and at reconcile."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dspool.api import DeepSeekDeploymentSpec
from dspool.catalog import builtin_catalog
from dspool.engine_support import (
    DEFAULT_ENGINE_IMAGES,
    FIRST_SERVING_RELEASE,
    engine_refusal,
    image_engine,
    image_version,
)
from dspool.inventory import build_pool
from dspool.reconcile import engine_refusal_for, reconcile
from dspool.sim.fleet import NodeGroup, PoolFile, node_manifests
from dspool.sizing import Backend, SizingRequest, plan
from dspool.workloads import DEFAULT_IMAGES

CATALOG = builtin_catalog()
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_image_versions_and_engines_are_read_from_the_tag_and_repository() -> None:
    assert image_version("vllm/vllm-openai:v0.10.2") == (0, 10, 2)
    assert image_version("ascend/vllm-ascend:v0.11.0rc0-310p") == (0, 11, 0)
    assert image_version("ascendhub/mindie:2.1.RC1-800I-A2-py311-openeuler24.03-lts") == (2, 1, 0)
    assert image_version("registry.local/site/vllm:latest") is None
    assert image_engine("quay.io/ascend/vllm-ascend:v0.11.0rc0") == Backend.VLLM_ASCEND
    assert image_engine("swr.example/ascendhub/mindie:3.0.0-800I-A2") == Backend.MINDIE
    assert image_engine("vllm/vllm-openai:v0.11.0") == Backend.VLLM
    assert image_engine("site/engine:1.0") is None


def test_dspool_default_images_are_the_ones_the_workloads_run() -> None:
    assert DEFAULT_IMAGES.vllm == DEFAULT_ENGINE_IMAGES[Backend.VLLM]
    assert DEFAULT_IMAGES.vllm_ascend == DEFAULT_ENGINE_IMAGES[Backend.VLLM_ASCEND]
    assert DEFAULT_IMAGES.mindie == DEFAULT_ENGINE_IMAGES[Backend.MINDIE]


def test_the_default_vllm_images_serve_v32_and_default_mindie_does_not() -> None:
    for backend in (Backend.VLLM, Backend.VLLM_ASCEND):
        assert engine_refusal("DeepseekV32ForCausalLM", backend, DEFAULT_ENGINE_IMAGES[backend]) is None
    refusal = engine_refusal("DeepseekV32ForCausalLM", Backend.MINDIE, DEFAULT_ENGINE_IMAGES[Backend.MINDIE])
    assert refusal is not None and "v3.0.0" in refusal


@pytest.mark.parametrize("key", list(FIRST_SERVING_RELEASE))
def test_a_release_just_before_the_first_is_refused_and_the_first_is_not(key: tuple[str, Backend]) -> None:
    architecture, backend = key
    first = FIRST_SERVING_RELEASE[key].version
    older = (first[0], first[1] - 1, 0) if first[1] else (first[0] - 1, 9, 0)
    image = "x/engine:" + ".".join(map(str, older))
    assert engine_refusal(architecture, backend, image) is not None
    assert engine_refusal(architecture, backend, "x/engine:" + ".".join(map(str, first))) is None
    assert engine_refusal(architecture, backend, "x/engine:latest") is None  # no version named: assumed current


def test_plan_refuses_v32_on_a_vllm_image_older_than_v0_11_0_with_the_reason() -> None:
    result = plan(
        CATALOG.model("deepseek-v3.2"),
        CATALOG.accelerator("H200-141G"),
        SizingRequest(engine_image="vllm/vllm-openai:v0.10.2"),
    )
    assert not result.feasible
    assert "vLLM v0.10.2" in result.reason and "v0.11.0" in result.reason


def test_v3_plans_do_not_depend_on_the_image_version_rules() -> None:
    """Architectures without a row (V3/R1/V3.1, the distills) are served by every pinned image."""
    old = SizingRequest(engine_image="vllm/vllm-openai:v0.10.2")
    for model_id in ("deepseek-r1", "deepseek-v3.1", "deepseek-r1-distill-qwen-32b"):
        assert plan(CATALOG.model(model_id), CATALOG.accelerator("H200-141G"), old).feasible


def nodes(accelerator: str, count: int) -> list[dict[str, Any]]:
    fleet = PoolFile(name="t", groups=[NodeGroup(name="n", count=count, accelerator=accelerator)])
    manifests = node_manifests(fleet, CATALOG)
    for node in manifests:
        node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    return manifests


def dsd(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "dspool.io/v1alpha1",
        "kind": "DeepSeekDeployment",
        "metadata": {"name": "v32", "namespace": "ai", "uid": "uid-v32", "generation": 1},
        "spec": spec,
    }


def test_reconcile_refuses_a_v32_dsd_whose_image_is_too_old_with_the_reason() -> None:
    pool = build_pool(nodes("H200-141G", 1), [], [], CATALOG)
    body = dsd({"model": "deepseek-v3.2", "serving": {"image": "vllm/vllm-openai:v0.10.2"}})
    result = reconcile(body, CATALOG, pool, [], NOW)
    assert result.status.phase == "Failed" and result.objects == [] and result.status.placements == []
    message = result.status.message or ""
    assert "vLLM v0.10.2" in message and "v0.11.0" in message and "spec.serving.image" in message
    assert [c.reason for c in result.status.conditions] == ["EngineUnsupported"]
    assert [e.reason for e in result.events] == ["EngineUnsupported"]


def test_reconcile_places_the_same_dsd_with_the_default_image() -> None:
    pool = build_pool(nodes("H200-141G", 1), [], [], CATALOG)
    result = reconcile(dsd({"model": "deepseek-v3.2"}), CATALOG, pool, [], NOW)
    assert result.status.phase == "Progressing"
    [placement] = result.status.placements
    assert (placement.accelerator, placement.backend, len(placement.nodes)) == ("H200-141G", "vllm", 1)


def test_reconcile_accepts_a_hugging_face_repo_id_as_the_model() -> None:
    pool = build_pool(nodes("H200-141G", 1), [], [], CATALOG)
    result = reconcile(dsd({"model": "deepseek-ai/DeepSeek-R1-0528"}), CATALOG, pool, [], NOW)
    assert result.status.phase == "Progressing" and len(result.status.placements) == 1
    service = result.objects[-1]
    assert "/" not in service["metadata"]["labels"]["app.kubernetes.io/name"]  # a valid label value


def test_reconcile_refuses_only_when_no_engine_the_dsd_may_run_serves_it() -> None:
    """With the operator's images and no backend asked, vllm-ascend (or vLLM) serves V3.2: not refused. Asking
    for MindIE on Ascend leaves only MindIE 2.1.RC1, which predates V3.2: refused, naming the first release."""
    spec = DeepSeekDeploymentSpec.model_validate({"model": "deepseek-v3.2"})
    assert engine_refusal_for(spec, CATALOG.model("deepseek-v3.2"), CATALOG, DEFAULT_IMAGES) is None
    pinned = DeepSeekDeploymentSpec.model_validate(
        {"model": "deepseek-v3.2", "backend": "mindie", "placement": {"acceleratorTypes": ["Ascend910B3"]}}
    )
    refusal = engine_refusal_for(pinned, CATALOG.model("deepseek-v3.2"), CATALOG, DEFAULT_IMAGES)
    assert refusal is not None and "MindIE v2.1.0" in refusal and "v3.0.0" in refusal
