"""The workload builders: what a user would see in the manifests dspool applies for one DeepSeekDeployment."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dspool.api import DeepSeekDeployment, ReplicaPlacement
from dspool.catalog import AcceleratorSpec, ModelSpec, Precision, builtin_catalog
from dspool.workloads import (
    DEFAULT_IMAGES,
    DOWNLOAD_SCRIPT,
    ImageDefaults,
    build_replica_objects,
    build_service,
    endpoint_url,
    images_from_env,
    replica_object_name,
    serving_port,
)
from dspool.workloads.common import PROBE_PERIOD_SECONDS, startup_failure_threshold
from dspool.workloads.mindie import (
    CONFIG_TEMPLATE_DIR,
    MINDIE_HOME,
    POD_IP_PLACEHOLDER,
    build_rank_table,
    mindie_start_script,
)

CATALOG = builtin_catalog()
UID = "5b0c7e9a-1111-2222-3333-444455556666"
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def make_dsd(name: str = "r1", namespace: str = "llm", **spec: Any) -> DeepSeekDeployment:
    return DeepSeekDeployment.model_validate(
        {"metadata": {"name": name, "namespace": namespace, "uid": UID}, "spec": {"model": "deepseek-r1", **spec}}
    )


def make_placement(
    accelerator: str,
    nodes: list[str],
    *,
    tp: int = 8,
    backend: str = "vllm",
    precision: str = "fp8",
    replica: int = 0,
    max_model_len: int = 32768,
    dp: int = 1,
) -> ReplicaPlacement:
    return ReplicaPlacement(
        replica=replica,
        accelerator=accelerator,
        precision=precision,
        backend=backend,
        tensor_parallel=tp,
        pipeline_parallel=len(nodes) if dp == 1 else 1,
        data_parallel=dp,
        max_model_len=max_model_len,
        nodes=[{"name": node, "devices": tp * dp // len(nodes) if dp > 1 else tp} for node in nodes],
        spec_hash="hash-123",
    )


def build(
    dsd: DeepSeekDeployment,
    placement: ReplicaPlacement,
    model: str = "deepseek-r1",
    *,
    lws: bool = True,
    images: ImageDefaults = DEFAULT_IMAGES,
) -> list[dict[str, Any]]:
    model_spec: ModelSpec = CATALOG.model(model)
    accelerator: AcceleratorSpec = CATALOG.accelerator(placement.accelerator)
    return build_replica_objects(dsd, placement, model_spec, accelerator, lws_available=lws, images=images)


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {[o['kind'] for o in objects]}"
    return matches[0]


def pod_templates(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if obj["kind"] == "LeaderWorkerSet":
        yield obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        yield obj["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    elif obj["kind"] in ("Deployment", "StatefulSet"):
        yield obj["spec"]["template"]


def engine(template: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = template["spec"]["containers"]
    (container,) = containers
    return container


def planned_nodes(template: dict[str, Any]) -> list[str]:
    terms = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    nodes = []
    for term in terms["nodeSelectorTerms"]:  # ORed; a metadata.name field selector takes exactly one value
        assert "matchExpressions" not in term
        (expression,) = term["matchFields"]
        assert expression["key"] == "metadata.name" and expression["operator"] == "In"
        (node,) = expression["values"]
        nodes.append(node)
    return nodes


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def command_line(container: dict[str, Any]) -> str:
    return " ".join(container["command"] + container.get("args", []))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container["env"]}


def port_named(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


# ---------------------------------------------------------------------------------- vLLM single node


def test_r1_on_one_h200_node_is_a_pinned_deployment_with_eight_gpus() -> None:
    dsd = make_dsd()
    objects = build(dsd, make_placement("H200-141G", ["gpu-node-7"]))

    assert [o["kind"] for o in objects] == ["Deployment"]
    deployment = objects[0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    template = deployment["spec"]["template"]
    assert planned_nodes(template) == ["gpu-node-7"]
    assert "nodeName" not in template["spec"]
    container = engine(template)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert args[0] == "deepseek-ai/DeepSeek-R1"
    assert flag(args, "--tensor-parallel-size") == "8"
    assert flag(args, "--served-model-name") == "deepseek-r1"
    assert flag(args, "--max-model-len") == "32768"
    assert flag(args, "--port") == "8000"
    assert "--enable-expert-parallel" in args and "--trust-remote-code" in args
    assert "--pipeline-parallel-size" not in args
    assert "--quantization" not in args  # R1 ships FP8: nothing to quantize
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in template["spec"]["tolerations"]
    assert env_of(container)["HF_HOME"] == "/root/.cache/huggingface"


def test_every_object_and_pod_is_owned_labelled_and_hashed() -> None:
    dsd = make_dsd()
    for objects in (
        build(dsd, make_placement("H200-141G", ["a"])),
        build(dsd, make_placement("H100-80G", ["a", "b"]), lws=True),
        build(dsd, make_placement("H100-80G", ["a", "b"]), lws=False),
        build(dsd, make_placement("Ascend910B3", ["a", "b"], backend="mindie", precision="w8a8")),
    ):
        for obj in objects:
            (owner,) = obj["metadata"]["ownerReferences"]
            assert owner == {
                "apiVersion": "dspool.io/v1alpha1",
                "kind": "DeepSeekDeployment",
                "name": "r1",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
            assert obj["metadata"]["namespace"] == "llm"
            for metadata in [obj["metadata"], *(t["metadata"] for t in pod_templates(obj))]:
                assert metadata["labels"]["dspool.io/deployment"] == "r1"
                assert metadata["labels"]["dspool.io/replica"] == "0"
                assert metadata["labels"]["app.kubernetes.io/managed-by"] == "dspool"
                assert metadata["labels"]["app.kubernetes.io/name"] == "deepseek-r1"
                assert metadata["annotations"]["dspool.io/spec-hash"] == "hash-123"
            for template in pod_templates(obj):
                assert template["metadata"]["labels"]["dspool.io/role"] in ("leader", "worker")


def test_single_node_pod_probes_health_and_gives_a_671b_model_an_hour_to_load() -> None:
    big = engine(build(make_dsd(), make_placement("H200-141G", ["a"]))[0]["spec"]["template"])
    startup = big["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "openai"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60 * 60
    assert big["readinessProbe"]["httpGet"]["path"] == "/health"
    assert big["livenessProbe"]["httpGet"]["path"] == "/health"
    assert port_named(big, "openai") == 8000

    small_dsd = make_dsd(model="deepseek-r1-distill-qwen-7b")
    small_placement = make_placement("H100-80G", ["a"], tp=1, precision="bf16")
    small = engine(build(small_dsd, small_placement, "deepseek-r1-distill-qwen-7b")[0]["spec"]["template"])
    budget = small["startupProbe"]["periodSeconds"] * small["startupProbe"]["failureThreshold"]
    assert 20 * 60 <= budget < 60 * 60
    assert "--enable-expert-parallel" not in small["args"]  # dense model


def test_fp8_plan_of_a_bf16_checkpoint_quantizes_dynamically() -> None:
    dsd = make_dsd(model="deepseek-r1-distill-llama-70b")
    placement = make_placement("H100-80G", ["a"], tp=2, precision="fp8")
    args = engine(build(dsd, placement, "deepseek-r1-distill-llama-70b")[0]["spec"]["template"])["args"]
    assert flag(args, "--quantization") == "fp8"


def test_prometheus_can_find_the_leader_metrics() -> None:
    template = build(make_dsd(), make_placement("H200-141G", ["a"]))[0]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_spec_serving_and_placement_fields_reach_the_pod() -> None:
    dsd = make_dsd(
        serving={
            "extraArgs": ["--kv-cache-dtype", "fp8"],
            "env": [{"name": "HF_HOME", "value": "/cache"}, {"name": "NCCL_DEBUG", "value": "INFO"}],
            "image": "mirror.internal/vllm-openai:custom",
            "gpuMemoryUtilization": 0.95,
            "resources": {"requests": {"cpu": "16"}, "limits": {"memory": "900Gi"}},
        },
        placement={
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
            "nodeSelector": {"pool": "h200"},
        },
    )
    template = build(dsd, make_placement("H200-141G", ["a"]))[0]["spec"]["template"]
    container = engine(template)
    assert container["args"][-2:] == ["--kv-cache-dtype", "fp8"]
    assert flag(container["args"], "--gpu-memory-utilization") == "0.95"
    assert container["image"] == "mirror.internal/vllm-openai:custom"
    env = env_of(container)
    assert env["HF_HOME"] == "/cache" and env["NCCL_DEBUG"] == "INFO"
    assert [var["name"] for var in container["env"]].count("HF_HOME") == 1
    assert container["resources"]["requests"]["cpu"] == "16"
    assert container["resources"]["limits"] == {"memory": "900Gi", "nvidia.com/gpu": "8"}
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in template["spec"][
        "tolerations"
    ]
    assert template["spec"]["nodeSelector"] == {"pool": "h200"}


def test_default_cpu_and_memory_scale_with_the_devices_and_leave_limits_to_the_user() -> None:
    container = engine(build(make_dsd(), make_placement("H200-141G", ["a"]))[0]["spec"]["template"])
    assert container["resources"]["requests"]["cpu"] == "32"
    assert container["resources"]["requests"]["memory"] == "256Gi"
    assert set(container["resources"]["limits"]) == {"nvidia.com/gpu"}


def test_shared_memory_is_memory_backed() -> None:
    template = build(make_dsd(), make_placement("H200-141G", ["a"]))[0]["spec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in engine(template)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}


# ---------------------------------------------------------------------------------------- sources


def test_pvc_source_is_mounted_and_served_from_the_mount_path() -> None:
    dsd = make_dsd(modelSource={"pvc": {"claimName": "weights", "subPath": "r1"}, "mountPath": "/weights"})
    template = build(dsd, make_placement("H200-141G", ["a"]))[0]["spec"]["template"]
    container = engine(template)
    assert container["args"][0] == "/weights"
    (volume,) = [v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/weights", "readOnly": True, "subPath": "r1"}
    assert "HF_HOME" not in env_of(container)


def test_host_path_source_must_be_an_existing_directory() -> None:
    dsd = make_dsd(modelSource={"hostPath": {"path": "/data/r1"}})
    template = build(dsd, make_placement("H200-141G", ["a"]))[0]["spec"]["template"]
    (volume,) = [v for v in template["spec"]["volumes"] if "hostPath" in v]
    assert volume["hostPath"] == {"path": "/data/r1", "type": "Directory"}
    assert engine(template)["args"][0] == "/models"


def test_uri_source_downloads_in_an_init_container_before_the_engine_starts() -> None:
    dsd = make_dsd(
        modelSource={"uri": "hf://deepseek-ai/DeepSeek-R1"}, serving={"env": [{"name": "HF_TOKEN", "value": "t"}]}
    )
    template = build(dsd, make_placement("H200-141G", ["a"]))[0]["spec"]["template"]
    (init,) = template["spec"]["initContainers"]
    init_env = env_of(init)
    assert init_env["MODEL_URI"] == "hf://deepseek-ai/DeepSeek-R1"
    assert init_env["MODEL_DIR"] == "/models"
    assert init_env["HF_TOKEN"] == "t"
    assert init["volumeMounts"][0]["mountPath"] == "/models"
    assert engine(template)["args"][0] == "/models"


# ----------------------------------------------------------------------------------- vLLM multi-node


def test_r1_on_two_h100_nodes_is_a_leader_worker_set_of_two_running_ray() -> None:
    objects = build(make_dsd(), make_placement("H100-80G", ["gpu-a", "gpu-b"]), lws=True)
    lws = only(objects, "LeaderWorkerSet")
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["spec"]["replicas"] == 1
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    assert group["restartPolicy"] == "RecreateGroupOnPodRestart"

    leader, worker = group["leaderTemplate"], group["workerTemplate"]
    assert planned_nodes(leader) == ["gpu-a"]
    assert planned_nodes(worker) == ["gpu-b"]
    leader_script = command_line(engine(leader))
    assert "ray start --head --port=6379" in leader_script
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray" in leader_script
    assert "--enable-expert-parallel" in leader_script
    worker_script = command_line(engine(worker))
    assert 'ray start --address="${LEADER}:6379" --block' in worker_script
    assert "LWS_LEADER_ADDRESS" in worker_script
    for template in (leader, worker):
        assert engine(template)["resources"]["limits"]["nvidia.com/gpu"] == "8"
        anti = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti == [
            {
                "labelSelector": {"matchLabels": {"dspool.io/deployment": "r1", "dspool.io/replica": "0"}},
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    assert leader["metadata"]["labels"]["dspool.io/role"] == "leader"
    assert worker["metadata"]["labels"]["dspool.io/role"] == "worker"
    assert "readinessProbe" in engine(leader) and "readinessProbe" not in engine(worker)


def test_without_lws_two_nodes_become_statefulsets_behind_a_headless_service() -> None:
    objects = build(make_dsd(), make_placement("H100-80G", ["gpu-a", "gpu-b"]), lws=False)
    assert [o["kind"] for o in objects] == ["Service", "StatefulSet", "StatefulSet"]
    headless, leader_set, worker_set = objects
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == {"dspool.io/deployment": "r1", "dspool.io/replica": "0"}
    for statefulset in (leader_set, worker_set):
        assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert leader_set["spec"]["replicas"] + worker_set["spec"]["replicas"] == 2  # one pod per planned node
    assert leader_set["spec"]["replicas"] == 1
    leader, worker = leader_set["spec"]["template"], worker_set["spec"]["template"]
    assert planned_nodes(leader) == ["gpu-a"] and planned_nodes(worker) == ["gpu-b"]
    assert "--pipeline-parallel-size 2" in command_line(engine(leader))
    leader_pod_dns = f"{leader_set['metadata']['name']}-0.{headless['metadata']['name']}.llm.svc"
    assert f'LEADER="{leader_pod_dns}"' in command_line(engine(worker))
    assert leader_set["spec"]["selector"]["matchLabels"]["dspool.io/role"] == "leader"
    assert worker_set["spec"]["selector"]["matchLabels"]["dspool.io/role"] == "worker"


def test_weight_only_fp8_on_ampere_serves_the_published_checkpoint_with_no_quantization_flag() -> None:
    lws = only(build(make_dsd(), make_placement("A100-80G", ["n1", "n2"], precision="w8a16")), "LeaderWorkerSet")
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    line = command_line(engine(leader))
    # vLLM reads the checkpoint's own FP8 quantization config and picks Marlin on compute capability 8.0;
    # a --quantization or --dtype flag here would force another method.
    assert "--quantization" not in line and "--dtype" not in line
    assert "deepseek-ai/DeepSeek-R1 " in line  # the published FP8 weights, as they are


def test_three_stage_pipeline_spreads_workers_over_the_other_planned_nodes() -> None:
    lws = only(build(make_dsd(), make_placement("A100-80G", ["n1", "n2", "n3"], precision="bf16")), "LeaderWorkerSet")
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 3
    assert planned_nodes(group["leaderTemplate"]) == ["n1"]
    assert planned_nodes(group["workerTemplate"]) == ["n2", "n3"]


def test_placement_with_the_wrong_node_count_is_refused() -> None:
    placement = make_placement("H100-80G", ["a", "b"]).model_copy(update={"pipeline_parallel": 3})
    with pytest.raises(ValueError, match="devices on its nodes for a layout of 24"):
        build(make_dsd(), placement)


def test_backend_on_the_wrong_vendor_is_refused() -> None:
    with pytest.raises(ValueError, match="Ascend"):
        build(make_dsd(), make_placement("H100-80G", ["a"], backend="mindie"))
    with pytest.raises(ValueError, match="NVIDIA"):
        build(make_dsd(), make_placement("Ascend910B3", ["a"], backend="vllm"))


# ---------------------------------------------------------------------------------------- Ascend


def mindie_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = only(objects, "ConfigMap")
    return dict(json.loads(config_map["data"]["config.json"]))


def test_mindie_single_node_config_serves_on_1025_with_probes_on_1026() -> None:
    dsd = make_dsd(serving={"gpuMemoryUtilization": 0.9})
    placement = make_placement("Ascend910B3", ["npu-a"], backend="mindie", precision="w8a8", max_model_len=16384)
    objects = build(dsd, placement)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment"]
    config = mindie_config(objects)
    server, backend = config["ServerConfig"], config["BackendConfig"]
    assert (server["port"], server["managementPort"], server["metricsPort"]) == (1025, 1026, 1027)
    assert server["httpsEnabled"] is False and server["interCommTLSEnabled"] is False
    assert server["ipAddress"] == POD_IP_PLACEHOLDER == server["managementIpAddress"]
    assert backend["npuDeviceIds"] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert backend["multiNodesInferEnabled"] is False and backend["multiNodesInferPort"] == 1120
    assert backend["interNodeTLSEnabled"] is False
    (model,) = backend["ModelDeployConfig"]["ModelConfig"]
    assert model["worldSize"] == 8
    assert model["modelName"] == "deepseek-r1"
    assert model["backendType"] == "atb"
    assert backend["ModelDeployConfig"]["maxSeqLen"] == 16384
    assert backend["ScheduleConfig"]["cacheBlockSize"] == 128
    assert backend["ScheduleConfig"]["maxPrefillTokens"] >= backend["ModelDeployConfig"]["maxInputTokenLen"]

    template = only(objects, "Deployment")["spec"]["template"]
    container = engine(template)
    assert port_named(container, "management") == 1026
    for probe, path in (("startupProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": "management"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert port_named(container, "openai") == 1025 and port_named(container, "metrics") == 1027
    env = env_of(container)
    assert env["MIES_CONTAINER_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MIES_SERVICE_MONITOR_MODE"] == "1"
    assert env["NPU_MEMORY_FRACTION"] == "0.9"
    assert "ASCEND_RT_VISIBLE_DEVICES" not in env  # the device plugin chooses and injects the NPUs
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == "8"
    assert {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"} in template["spec"][
        "tolerations"
    ]
    host_mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["mountPath"].startswith("/usr/local/")}
    assert set(host_mounts) == {"/usr/local/Ascend/driver", "/usr/local/dcmi"}
    assert all(mount["readOnly"] for mount in host_mounts.values())
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "1027"


def test_mindie_without_a_model_source_downloads_the_checkpoint_it_needs_locally() -> None:
    objects = build(make_dsd(), make_placement("Ascend910B3", ["npu-a"], backend="mindie", precision="w8a8"))
    template = only(objects, "Deployment")["spec"]["template"]
    (init,) = template["spec"]["initContainers"]
    assert env_of(init)["MODEL_URI"] == "hf://deepseek-ai/DeepSeek-R1"
    model = mindie_config(objects)["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
    assert model["modelWeightPath"] == env_of(init)["MODEL_DIR"]


def test_mindie_start_script_puts_the_pod_ip_into_config_and_execs_the_daemon() -> None:
    objects = build(make_dsd(), make_placement("Ascend910B3", ["npu-a"], backend="mindie", precision="w8a8"))
    script = only(objects, "ConfigMap")["data"]["start.sh"]
    assert f"s/{POD_IP_PLACEHOLDER}/${{MIES_CONTAINER_IP}}/g" in script
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in script
    assert script.rstrip().endswith("exec /usr/local/Ascend/mindie/latest/mindie-service/bin/mindieservice_daemon")
    assert "RANKTABLEFILE" not in script


def test_mindie_two_nodes_enable_multi_node_inference_with_a_rank_table() -> None:
    placement = make_placement("Ascend910B3", ["npu-a", "npu-b"], backend="mindie", precision="w8a8")
    objects = build(make_dsd(), placement, lws=True)  # MindIE never uses LWS
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "StatefulSet", "StatefulSet"]
    assert mindie_config(objects)["BackendConfig"]["multiNodesInferEnabled"] is True
    leader_set, worker_set = objects[2], objects[3]
    assert planned_nodes(leader_set["spec"]["template"]) == ["npu-a"]
    assert planned_nodes(worker_set["spec"]["template"]) == ["npu-b"]
    for statefulset in (leader_set, worker_set):
        template = statefulset["spec"]["template"]
        assert template["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910b"
        container = engine(template)
        env = env_of(container)
        for name in ("RANK_TABLE_FILE", "RANKTABLEFILE", "MIES_RANKTABLEFILE"):  # every name a release reads
            assert env[name] == "/user/serverid/devindex/config/hccl.json"
        assert env["HCCL_CONNECT_TIMEOUT"] == "7200" and "MIES_CONTAINER_MANAGEMENT_IP" in env
        mount_paths = [m["mountPath"] for m in container["volumeMounts"]]
        assert "/user/serverid/devindex/config" in mount_paths
    assert "RANK_TABLE_FILE" in only(objects, "ConfigMap")["data"]["start.sh"]


def test_310p_runs_vllm_ascend_in_float16_and_never_multi_node() -> None:
    dsd = make_dsd(model="deepseek-r1-distill-qwen-7b")
    placement = make_placement("Ascend310P", ["duo-1"], tp=2, backend="vllm-ascend", precision="bf16")
    template = build(dsd, placement, "deepseek-r1-distill-qwen-7b")[0]["spec"]["template"]
    container = engine(template)
    assert flag(container["args"], "--dtype") == "float16"
    assert container["image"] == DEFAULT_IMAGES.vllm_ascend_310p
    assert container["resources"]["limits"]["huawei.com/Ascend310P"] == "2"
    assert template["spec"]["tolerations"][0]["key"] == "huawei.com/Ascend310P"

    two_nodes = make_placement("Ascend310P", ["duo-1", "duo-2"], tp=2, backend="mindie", precision="bf16")
    with pytest.raises(ValueError, match="multi-node"):
        build(dsd, two_nodes, "deepseek-r1-distill-qwen-7b")


def test_vllm_ascend_gets_the_ascend_image_devices_and_host_mounts() -> None:
    placement = make_placement("Ascend910B3", ["npu-a"], backend="vllm-ascend", precision="w8a8")
    container = engine(build(make_dsd(), placement)[0]["spec"]["template"])
    assert container["image"] == DEFAULT_IMAGES.vllm_ascend
    assert container["resources"]["requests"]["huawei.com/Ascend910"] == "8"
    assert flag(container["args"], "--quantization") == "ascend"
    assert {"/usr/local/Ascend/driver", "/usr/local/dcmi"} <= {m["mountPath"] for m in container["volumeMounts"]}


# --------------------------------------------------------------------------------------- rank table


def test_rank_table_numbers_ranks_consecutively_over_servers_as_strings() -> None:
    table = build_rank_table(["10.0.0.1", "10.0.0.2"], [["192.168.1.1", "192.168.1.2"], ["192.168.2.1", "192.168.2.2"]])
    assert table["server_count"] == "2" and table["status"] == "completed" and table["version"] == "1.0"
    devices = [d for server in table["server_list"] for d in server["device"]]
    assert [d["rank_id"] for d in devices] == ["0", "1", "2", "3"]
    assert [d["device_id"] for d in devices] == ["0", "1", "0", "1"]
    assert table["server_list"][1]["server_id"] == "10.0.0.2" == table["server_list"][1]["container_ip"]

    def strings_only(value: Any) -> bool:
        if isinstance(value, dict):
            return all(strings_only(v) for v in value.values())
        if isinstance(value, list):
            return all(strings_only(v) for v in value)
        return isinstance(value, str)

    assert strings_only(table)


def test_rank_table_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one list per server"):
        build_rank_table(["10.0.0.1", "10.0.0.2"], [["192.168.1.1"]])
    with pytest.raises(ValueError, match="same number"):
        build_rank_table(["10.0.0.1", "10.0.0.2"], [["192.168.1.1"], ["192.168.2.1", "192.168.2.2"]])


# ------------------------------------------------------------------------------------------ service


def test_service_reaches_every_replicas_leader_on_the_port_named_openai() -> None:
    dsd = make_dsd()
    service = build_service(dsd)
    assert service["metadata"]["name"] == "r1"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {"dspool.io/deployment": "r1", "dspool.io/role": "leader"}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["openai"]["targetPort"] == "openai" and ports["openai"]["port"] == 8000
    assert ports["metrics"]["targetPort"] == "metrics"
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID
    assert endpoint_url(dsd) == "http://r1.llm.svc:8000/v1"

    # Replicas of one DSD on vLLM and on MindIE: the selected pods all expose a port named openai.
    vllm_objects = build(dsd, make_placement("H200-141G", ["gpu-a"], replica=0))
    mindie_objects = build(dsd, make_placement("Ascend910B3", ["npu-a"], backend="mindie", precision="w8a8", replica=1))
    leaders = [
        template
        for obj in vllm_objects + mindie_objects
        for template in pod_templates(obj)
        if all(template["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    ]
    assert len(leaders) == 2
    assert sorted(port_named(engine(t), "openai") for t in leaders) == sorted(
        [serving_port("vllm"), serving_port("mindie")]
    )
    assert (serving_port("vllm"), serving_port("vllm-ascend"), serving_port("mindie")) == (8000, 8000, 1025)


def test_multi_node_workers_are_not_behind_the_service() -> None:
    selector = build_service(make_dsd())["spec"]["selector"]
    for lws in (True, False):
        for obj in build(make_dsd(), make_placement("H100-80G", ["a", "b"]), lws=lws):
            for template in pod_templates(obj):
                labels = template["metadata"]["labels"]
                selected = all(labels.get(k) == v for k, v in selector.items())
                assert selected == (labels["dspool.io/role"] == "leader")


# -------------------------------------------------------------------------------------------- names

DSD_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9.]{58})[a-z0-9]", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(name=DSD_NAMES, replica=st.integers(min_value=0, max_value=255))
def test_names_stay_valid_dns_labels_for_60_character_dsd_names(name: str, replica: int) -> None:
    object_name = replica_object_name(name, replica)
    assert len(object_name) <= 63 and DNS_LABEL.fullmatch(object_name)
    assert object_name.endswith(f"-{replica}")
    dsd = make_dsd(name=name)
    service = build_service(dsd)
    assert len(service["metadata"]["name"]) <= 63 and DNS_LABEL.fullmatch(service["metadata"]["name"])
    assert len(service["spec"]["selector"]["dspool.io/deployment"]) <= 63
    placement = make_placement("H100-80G", ["a", "b"], replica=replica)
    for obj in build(dsd, placement, lws=False) + build(dsd, placement, lws=True):
        obj_name = obj["metadata"]["name"]
        assert DNS_LABEL.fullmatch(obj_name)
        if obj["kind"] == "StatefulSet":
            # pod names <name>-<ordinal> and the controller-revision-hash label <name>-<10 chars> stay <= 63
            assert len(obj_name) + 11 <= 63
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63


@given(first=DSD_NAMES, second=DSD_NAMES)
def test_different_long_names_do_not_collide(first: str, second: str) -> None:
    if first != second:
        assert replica_object_name(first, 0) != replica_object_name(second, 0)


def test_short_dns_names_are_kept_readable() -> None:
    assert replica_object_name("r1", 3) == "r1-3"
    assert replica_object_name("r1.prod", 0).startswith("r1-prod-")  # dots are not allowed in Service names


# ------------------------------------------------------------------------------------- images, scripts


def all_images(objects: list[dict[str, Any]]) -> list[str]:
    return [
        container["image"]
        for obj in objects
        for template in pod_templates(obj)
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]
    ]


def test_default_images_name_no_registry_host() -> None:
    dsd = make_dsd(modelSource={"uri": "s3://bucket/r1"})
    objects = [
        *build(dsd, make_placement("H200-141G", ["a"])),
        *build(dsd, make_placement("H100-80G", ["a", "b"]), lws=False),
        *build(dsd, make_placement("Ascend910B3", ["a"], backend="mindie", precision="w8a8")),
        *build(dsd, make_placement("Ascend910B3", ["a"], backend="vllm-ascend", precision="w8a8")),
    ]
    images = all_images(objects)
    assert len(set(images)) >= 4
    for image in images:
        # A registry host is a first path segment with a dot or a port (registry.example/..., host:5000/...).
        has_registry_host = "/" in image and re.search(r"[.:]|^localhost$", image.split("/")[0]) is not None
        assert ".com/" not in image and not has_registry_host, image


def test_images_can_be_overridden_from_the_environment() -> None:
    images = images_from_env({"DSPOOL_IMAGE_VLLM": "mirror.local/vllm:v1", "DSPOOL_IMAGE_MINDIE": " "})
    assert images.vllm == "mirror.local/vllm:v1"
    assert images.mindie == DEFAULT_IMAGES.mindie
    container = engine(build(make_dsd(), make_placement("H200-141G", ["a"]), images=images)[0]["spec"]["template"])
    assert container["image"] == "mirror.local/vllm:v1"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_generated_shell_scripts_parse() -> None:
    scripts = [DOWNLOAD_SCRIPT, mindie_start_script(multi_node=True), mindie_start_script(multi_node=False)]
    for obj in build(make_dsd(), make_placement("H100-80G", ["a", "b"]), lws=False):
        for template in pod_templates(obj):
            command = engine(template)["command"]
            if command[:2] == ["/bin/bash", "-c"]:
                scripts.append(command[2])
    assert len(scripts) == 5
    for script in scripts:
        result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
        assert result.returncode == 0, result.stderr


def test_builders_are_deterministic() -> None:
    placement = make_placement("Ascend910B3", ["a", "b"], backend="mindie", precision="w8a8")
    assert build(make_dsd(), placement) == build(make_dsd(), placement)
    assert json.dumps(build(make_dsd(), placement), sort_keys=True) == json.dumps(
        build(make_dsd(), placement), sort_keys=True
    )


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sed") is None, reason="needs bash and sed")
def test_mindie_start_script_really_writes_the_pod_ip_and_starts_the_daemon(tmp_path: Path) -> None:
    objects = build(make_dsd(), make_placement("Ascend910B3", ["npu-a"], backend="mindie", precision="w8a8"))
    data = only(objects, "ConfigMap")["data"]
    home, templates = tmp_path / "mindie-service", tmp_path / "templates"
    (home / "bin").mkdir(parents=True)
    (home / "conf").mkdir()
    templates.mkdir()
    (templates / "config.json").write_text(data["config.json"])
    daemon = home / "bin" / "mindieservice_daemon"
    daemon.write_text("#!/bin/bash\necho daemon started in $(pwd)\n")
    daemon.chmod(0o755)
    script = data["start.sh"].replace(MINDIE_HOME, str(home)).replace(CONFIG_TEMPLATE_DIR, str(templates))

    result = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "MIES_CONTAINER_IP": "10.1.2.3"},
        text=True,
        capture_output=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert f"daemon started in {home}" in result.stdout
    rendered = home / "conf" / "config.json"
    server = json.loads(rendered.read_text())["ServerConfig"]
    assert server["ipAddress"] == "10.1.2.3" == server["managementIpAddress"]
    assert rendered.stat().st_mode & 0o777 == 0o640


def test_manifests_survive_server_side_apply_merge_keys() -> None:
    """The controller applies server-side: duplicate list-map keys (ports, env, volumes, mounts) are rejected."""
    dsd = make_dsd(serving={"env": [{"name": "POD_IP", "value": "override"}]}, modelSource={"uri": "hf://x/y"})
    objects = [
        *build(dsd, make_placement("H200-141G", ["a"])),
        *build(dsd, make_placement("H100-80G", ["a", "b"]), lws=True),
        *build(dsd, make_placement("H100-80G", ["a", "b"]), lws=False),
        *build(dsd, make_placement("Ascend910B3", ["a", "b"], backend="mindie", precision="w8a8")),
        *build(dsd, make_placement("Ascend910B3", ["a"], backend="vllm-ascend", precision="w8a8")),
        build_service(dsd),
    ]

    def unique(values: list[Any]) -> bool:
        return len(values) == len(set(values))

    for obj in objects:
        if obj["kind"] == "Service":
            assert unique([(p["port"], p["protocol"]) for p in obj["spec"]["ports"]])
            assert unique([p["name"] for p in obj["spec"]["ports"]])
        for template in pod_templates(obj):
            spec = template["spec"]
            assert unique([v["name"] for v in spec["volumes"]])
            for container in spec.get("initContainers", []) + spec["containers"]:
                assert unique([(p["containerPort"], p["protocol"]) for p in container.get("ports", [])])
                assert unique([p["name"] for p in container.get("ports", [])])
                assert unique([e["name"] for e in container["env"]])
                assert unique([m["mountPath"] for m in container["volumeMounts"]])


def test_the_example_in_the_docs_is_what_the_builder_prints() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text()
    section = doc.split("## Example: R1 on one 8 x H200 node", 1)[1]
    script = section.split("```python\n", 1)[1].split("```", 1)[0]
    documented = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", script], text=True, capture_output=True, check=True)
    assert list(yaml.safe_load_all(documented)) == list(yaml.safe_load_all(result.stdout))


def test_engine_and_fetch_pods_pull_with_the_configured_secrets() -> None:
    images = images_from_env({"DSPOOL_IMAGE_PULL_SECRETS": "mirror-creds, second ,"})
    assert images.pull_secrets == ("mirror-creds", "second")
    dsd = make_dsd(modelSource={"uri": "s3://bucket/r1"})  # a fetch init container in every pod
    objects = [
        *build(dsd, make_placement("H200-141G", ["a"]), images=images),
        *build(dsd, make_placement("H100-80G", ["a", "b"]), lws=False, images=images),
        *build(dsd, make_placement("H100-80G", ["a", "b"]), lws=True, images=images),
        *build(dsd, make_placement("Ascend910B3", ["a"], backend="mindie", precision="w8a8"), images=images),
    ]
    templates = [template for obj in objects for template in pod_templates(obj)]
    assert len(templates) >= 6
    for template in templates:
        assert template["spec"]["imagePullSecrets"] == [{"name": "mirror-creds"}, {"name": "second"}]
        assert template["spec"]["initContainers"]  # the fetch container pulls with them too
    assert "imagePullSecrets" not in build(dsd, make_placement("H200-141G", ["a"]))[0]["spec"]["template"]["spec"]


def test_the_startup_budget_grows_with_a_checkpoint_too_big_to_load_in_the_usual_hour() -> None:
    r1 = builtin_catalog().model("deepseek-r1")
    usual = startup_failure_threshold(r1, Precision.FP8)
    assert usual * PROBE_PERIOD_SECONDS == 3600  # 641 GiB load in minutes: the hour for big models holds
    huge = r1.model_copy(update={"checkpoint_gib": {Precision.FP8: 4000.0}})
    assert startup_failure_threshold(huge, Precision.FP8) * PROBE_PERIOD_SECONDS > 2 * 3600
