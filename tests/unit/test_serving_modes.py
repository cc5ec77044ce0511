"""What the engines get for the serving modes, secrets and the RDMA fabric (built objects, not plans)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from test_workloads import CATALOG, build, engine, env_of, make_dsd, make_placement, only, pod_templates

from dspool.api import ReplicaPlacement
from dspool.reconcile import interconnect_condition
from dspool.workloads import Interconnect, build_replica_objects


def serve_args(objects: list[dict[str, Any]]) -> list[str]:
    container = engine(next(pod_templates(objects[0])))
    return list(container.get("args") or [])


def test_fp8_kv_cache_and_mtp_become_vllm_flags() -> None:
    dsd = make_dsd(serving={"kvCacheDtype": "fp8", "speculativeDecoding": {"numSpeculativeTokens": 2}})
    args = serve_args(build(dsd, make_placement("H200-141G", ["a"])))
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
    assert json.loads(args[args.index("--speculative-config") + 1]) == {"method": "mtp", "num_speculative_tokens": 2}


def data_expert_placement(nodes: list[str], per_node: int = 8) -> ReplicaPlacement:
    return ReplicaPlacement(
        replica=0, accelerator="H100-80G", precision="fp8", backend="vllm", tensor_parallel=1, pipeline_parallel=1,
        data_parallel=per_node * len(nodes), max_model_len=32768,
        nodes=[{"name": n, "devices": per_node} for n in nodes], spec_hash="h",
    )  # fmt: skip


def test_data_expert_on_one_node_is_one_vllm_serve_with_dp_and_ep() -> None:
    args = serve_args(build(make_dsd(serving={"parallelism": "data-expert"}), data_expert_placement(["a"])))
    assert args[args.index("--data-parallel-size") + 1] == "8"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert "--enable-expert-parallel" in args and "--pipeline-parallel-size" not in args


def test_data_expert_over_two_nodes_runs_a_headless_worker_starting_at_rank_8() -> None:
    objects = build(make_dsd(serving={"parallelism": "data-expert"}), data_expert_placement(["a", "b"]))
    lws = only(objects, "LeaderWorkerSet")
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    leader = engine(group["leaderTemplate"])
    assert leader["command"] == ["vllm", "serve"]
    args = leader["args"]
    assert args[args.index("--data-parallel-size-local") + 1] == "8"
    assert args[args.index("--data-parallel-address") + 1] == "$(POD_IP)"  # kubelet expands it
    script = engine(group["workerTemplate"])["command"][2]
    assert "--headless" in script and '"$(( INDEX * 8 ))"' in script
    assert '--data-parallel-address "${LEADER}"' in script and "$(POD_IP)" not in script
    assert "ray start" not in script
    words = shlex.split(script.splitlines()[-1].replace('"$(( INDEX * 8 ))"', "8"))
    assert words[words.index("--data-parallel-size") + 1] == "16"


def test_secrets_reach_the_engine_and_the_fetch_container_as_references() -> None:
    dsd = make_dsd(
        serving={
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
            "envFrom": [{"secretRef": {"name": "site-proxy"}}],
        },
        modelSource={"uri": "hf://deepseek-ai/DeepSeek-R1"},
    )
    template = next(pod_templates(build(dsd, make_placement("H200-141G", ["a"]))[0]))
    for container in [engine(template), *template["spec"]["initContainers"]]:
        assert env_of(container)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
        assert container["envFrom"] == [{"secretRef": {"name": "site-proxy"}}]
    assert "hf_" not in json.dumps(template).lower().replace("hf_token", "")  # no token value anywhere


def test_multi_node_nvidia_pods_request_the_sites_rdma_resource_and_ascend_pods_do_not() -> None:
    fabric = Interconnect(rdma_resource="rdma/rdma_shared_device_a", env=(("NCCL_IB_HCA", "mlx5"),))

    def built(accelerator: str, nodes: list[str], **placement: Any) -> list[dict[str, Any]]:
        where = make_placement(accelerator, nodes, **placement)
        model, device = CATALOG.model("deepseek-r1"), CATALOG.accelerator(accelerator)
        return build_replica_objects(make_dsd(), where, model, device, lws_available=True, interconnect=fabric)

    for template in pod_templates(built("H100-80G", ["a", "b"])[0]):
        container = engine(template)
        assert container["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert env_of(container)["NCCL_IB_HCA"] == "mlx5"
    single = engine(next(pod_templates(built("H200-141G", ["a"])[0])))
    assert "rdma/rdma_shared_device_a" not in single["resources"]["limits"]
    mindie = built("Ascend910B3", ["x", "y"], backend="mindie", precision="w8a8")
    statefulsets = [o for o in mindie if o["kind"] == "StatefulSet"]
    assert statefulsets and all(
        "rdma/rdma_shared_device_a" not in engine(s["spec"]["template"])["resources"]["limits"] for s in statefulsets
    )


def test_the_interconnect_condition_warns_when_a_gpu_replica_spans_nodes_without_rdma() -> None:
    gang = make_placement("H100-80G", ["a", "b"])
    warning = interconnect_condition([gang], CATALOG, Interconnect())
    assert warning is not None and (warning.status, warning.reason) == ("False", "NoRDMA")
    assert "--rdma-resource" in warning.message
    fine = interconnect_condition([gang], CATALOG, Interconnect(rdma_resource="rdma/hca"))
    assert fine is not None and fine.status == "True"
    npu = make_placement("Ascend910B3", ["x", "y"], backend="mindie", precision="w8a8")
    assert interconnect_condition([npu], CATALOG, Interconnect()).reason == "NPURoCE"  # type: ignore[union-attr]
    assert interconnect_condition([make_placement("H200-141G", ["a"])], CATALOG, Interconnect()) is None


def test_mindie_rank_table_keeps_the_physical_device_ids_the_plugin_allocated() -> None:
    from dspool.workloads.mindie import rank_table_from_pods

    def pod(name: str, role: str, ip: str, host: str, ids: list[int]) -> dict[str, Any]:
        devices = [{"device_id": str(i), "device_ip": f"10.9.{i}.{host[-1]}"} for i in ids]
        annotation = json.dumps({"pod_name": name, "server_id": name, "host_ip": host, "devices": devices})
        return {
            "metadata": {"name": name, "labels": {"dspool.io/role": role},
                         "annotations": {"ascend.kubectl.kubernetes.io/ascend-910-configuration": annotation}},
            "status": {"podIP": ip, "hostIP": host},
        }  # fmt: skip

    table = rank_table_from_pods(
        [
            pod("r-0", "leader", "10.0.0.1", "192.0.2.1", [4, 5, 6, 7]),
            pod("r-w-0", "worker", "10.0.0.2", "192.0.2.2", [0, 1, 2, 3]),
        ],
        2,
    )
    assert table is not None
    ids = [[d["device_id"] for d in server["device"]] for server in table["server_list"]]
    assert ids == [["4", "5", "6", "7"], ["0", "1", "2", "3"]]
    ranks = [d["rank_id"] for server in table["server_list"] for d in server["device"]]
    assert ranks == [str(i) for i in range(8)]
