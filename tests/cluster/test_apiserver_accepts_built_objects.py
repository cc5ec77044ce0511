"""Every object the workload builders produce, checked by a real API server with strict field validation
(dry run): vLLM, MindIE and vllm-ascend, single- and multi-node, and the LeaderWorkerSet against the real LWS
CRD (the local control plane installs LWS from its pinned module; see e2e/cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from dspool import cli
from dspool.api import DeepSeekDeployment, NodeDevices, ReplicaPlacement
from dspool.catalog import Precision, builtin_catalog
from dspool.sizing import Backend
from dspool.workloads import build_replica_objects, build_service


def test_r1_on_two_h100_nodes_is_a_leader_worker_set_the_api_server_accepts(
    api_client: client.ApiClient, namespace: str, lws_installed: None
) -> None:
    catalog = builtin_catalog()
    dsd = DeepSeekDeployment.model_validate(
        {"metadata": {"name": "r1", "namespace": namespace, "uid": "00000000-0000-4000-8000-000000000001"},
         "spec": {"model": "deepseek-r1"}}
    )  # fmt: skip
    placement = ReplicaPlacement(
        replica=0, accelerator="H100-80G", precision=Precision.FP8, backend=Backend.VLLM, tensor_parallel=8,
        pipeline_parallel=2, max_model_len=32768, spec_hash="abc",
        nodes=[NodeDevices(name="h100-a", devices=8), NodeDevices(name="h100-b", devices=8)],
    )  # fmt: skip
    objects = build_replica_objects(
        dsd, placement, catalog.model("deepseek-r1"), catalog.accelerator("H100-80G"), lws_available=True
    )
    [lws] = [o for o in objects if o["kind"] == "LeaderWorkerSet"]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    lws["metadata"].pop("ownerReferences")  # the owner does not exist in this test
    custom = client.CustomObjectsApi(api_client)

    def dry_run_create(body: dict[str, Any]) -> dict[str, Any]:
        # Strict field validation: an unknown or misplaced field is an error, not a silent prune.
        created: dict[str, Any] = custom.create_namespaced_custom_object(
            "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", body,
            dry_run="All", field_validation="Strict",
        )  # fmt: skip
        return created

    accepted = dry_run_create(lws)
    assert accepted["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert accepted["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    broken = json.loads(json.dumps(lws))
    broken["spec"]["leaderWorkerTemplate"]["sizee"] = 2  # the check above could fail: a typo is rejected
    with pytest.raises(ApiException) as rejected:
        dry_run_create(broken)
    assert "sizee" in rejected.value.body


SCENARIOS = [
    # (model, accelerator, backend, precision, tp, nodes)
    ("deepseek-r1", "H200-141G", Backend.VLLM, Precision.FP8, 8, 1),
    ("deepseek-r1", "H100-80G", Backend.VLLM, Precision.FP8, 8, 2),
    ("deepseek-r1-distill-qwen-32b", "Ascend910B3", Backend.MINDIE, Precision.BF16, 2, 1),
    ("deepseek-r1", "Ascend910B3", Backend.MINDIE, Precision.W8A8, 8, 2),
    ("deepseek-r1-distill-qwen-7b", "Ascend910B3", Backend.VLLM_ASCEND, Precision.BF16, 1, 1),
    ("deepseek-r1-distill-qwen-1.5b", "Ascend310P", Backend.MINDIE, Precision.BF16, 1, 1),
]


@pytest.mark.parametrize(("model", "accelerator", "backend", "precision", "tp", "nodes"), SCENARIOS)
def test_every_built_object_passes_strict_validation(
    api_client: client.ApiClient, namespace: str, model: str, accelerator: str, backend: Backend,
    precision: Precision, tp: int, nodes: int,
) -> None:  # fmt: skip
    catalog = builtin_catalog()
    dsd = DeepSeekDeployment.model_validate(
        {"metadata": {"name": "m", "namespace": namespace, "uid": "00000000-0000-4000-8000-000000000002"},
         "spec": {"model": model, "modelSource": {"hostPath": {"path": "/data/models"}}}}
    )  # fmt: skip
    placement = ReplicaPlacement(
        replica=0, accelerator=accelerator, precision=precision, backend=backend, tensor_parallel=tp,
        pipeline_parallel=nodes, max_model_len=16384, spec_hash="abc",
        nodes=[NodeDevices(name=f"node-{i}", devices=tp) for i in range(nodes)],
    )  # fmt: skip
    objects = build_replica_objects(
        dsd, placement, catalog.model(model), catalog.accelerator(accelerator), lws_available=False
    )
    objects.append(build_service(dsd))
    for obj in objects:
        obj["metadata"].pop("ownerReferences", None)  # the owner does not exist in this test
    dry_run_create_all(api_client, namespace, objects)


def test_dspool_render_of_a_multi_node_mindie_dsd_is_accepted_by_the_api_server(
    api_client: client.ApiClient, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dspool render` (the operator's own sizing, placement and builders on a pool file): every object it
    prints passes strict server-side validation, with the multi-node MindIE environment and secrets as refs."""
    manifest = tmp_path / "r1-ascend.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "dspool.io/v1alpha1", "kind": "DeepSeekDeployment",
                "metadata": {"name": "r1-ascend", "namespace": namespace},
                "spec": {
                    "model": "deepseek-r1", "precision": "w8a8", "backend": "mindie",
                    "modelSource": {"pvc": {"claimName": "r1-w8a8"}},
                    "serving": {
                        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
                        "envFrom": [{"configMapRef": {"name": "site-proxy"}}],
                    },
                },
            }
        )
    )  # fmt: skip
    pool = Path(__file__).resolve().parents[2] / "examples" / "pools" / "enterprise-mixed.yaml"
    assert cli.main(["render", "-f", str(manifest), "--pool", str(pool), "-o", "json"]) == 0
    objects = json.loads(capsys.readouterr().out)["items"]
    kinds = [o["kind"] for o in objects]
    assert kinds.count("StatefulSet") == 2 and "Service" in kinds  # leader and worker servers: TP16 over 2
    for obj in objects:
        assert "ownerReferences" not in obj["metadata"]  # no uid in the manifest: the operator adds them
        for container in _containers(obj):
            env = {var["name"]: var for var in container.get("env", [])}
            assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
            assert {"RANK_TABLE_FILE", "RANKTABLEFILE", "MIES_RANKTABLEFILE", "HCCL_CONNECT_TIMEOUT"} <= set(env)
    dry_run_create_all(api_client, namespace, objects)


def dry_run_create_all(api_client: client.ApiClient, namespace: str, objects: list[dict[str, Any]]) -> None:
    """Create every object as a server-side dry run with strict field validation; fail on the first refusal."""
    resources = DynamicClient(api_client).resources
    for obj in objects:
        path = resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).path(namespace=namespace)
        try:
            api_client.call_api(
                path, "POST", body=obj, query_params=[("dryRun", "All"), ("fieldValidation", "Strict")],
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True,
            )  # fmt: skip
        except ApiException as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} rejected: {exc.body}")


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    template = obj.get("spec", {}).get("template")
    return list(template["spec"]["containers"]) if template else []
