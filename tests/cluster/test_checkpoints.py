"""The checkpoints people deploy now (issue 22) on a real API server: a DeepSeek-V3.2 DSD pinning a vLLM image
older than v0.11.0 is refused with the reason in its status; the same DSD on the default image is placed; a DSD
naming its model by the Hugging Face repo id is accepted by the CRD's validation and placed."""

from __future__ import annotations

from conftest import OperatorOn
from kubernetes import client
from test_operator import create_dsd, wait_phase


def test_a_v32_dsd_with_an_image_too_old_is_refused_and_with_the_default_image_placed(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, namespace: str
) -> None:
    _pool, operator = operator_on("checkpoints", """
        - {name: h200, count: 2, accelerator: H200-141G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "old-image", {
        "model": "deepseek-v3.2", "serving": {"image": "vllm/vllm-openai:v0.10.2"},
        "placement": {"acceleratorTypes": ["H200-141G"]},
    })  # fmt: skip
    refused = wait_phase(custom, namespace, "old-image", "Failed", 90)
    status = refused["status"]
    assert "vLLM v0.10.2" in status["message"] and "v0.11.0" in status["message"], operator.log_tail()
    [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "EngineUnsupported" and ready["status"] == "False"
    assert status.get("placements", []) == []

    create_dsd(custom, namespace, "default-image", {"model": "deepseek-ai/DeepSeek-V3.2"})
    placed = wait_phase(custom, namespace, "default-image", "Ready", 120)
    [placement] = placed["status"]["placements"]
    assert placement["accelerator"] == "H200-141G" and placement["backend"] == "vllm", operator.log_tail()
    assert [n["devices"] for n in placement["nodes"]] == [8]
