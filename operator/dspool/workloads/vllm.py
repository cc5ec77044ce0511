"""vLLM: ``vllm serve`` on NVIDIA GPUs, and the same objects for vllm-ascend on Ascend NPUs.

One node: a Deployment. Several nodes (pipeline parallel): a LeaderWorkerSet running a Ray cluster when LWS
is installed, else a headless Service, a 1-pod leader StatefulSet and a worker StatefulSet. What vllm-ascend
adds (its arguments, the NPU driver mounts) comes from :mod:`dspool.workloads.vllm_ascend` and
:func:`dspool.workloads.common.add_ascend_host_mounts`.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from dspool.api import DeepSeekDeployment, KvCacheDtype, ReplicaPlacement
from dspool.catalog import AcceleratorSpec, ModelSpec, Precision
from dspool.workloads.common import (
    LEADER,
    OPENAI_PORT_NAME,
    PROBE_PERIOD_SECONDS,
    WORKER,
    PodParts,
    Replica,
    add_ascend_host_mounts,
    deployment,
    devices_on,
    engine_container,
    headless_service,
    http_probe,
    leader_address,
    model_parts,
    pod_template,
    prometheus_annotations,
    startup_failure_threshold,
    statefulset,
)
from dspool.workloads.vllm_ascend import ascend_serve_args

VLLM_PORT = 8000
RAY_PORT = 6379
# Ray-less multi-node data parallelism: the ranks' engines talk to the leader on this port
# (--data-parallel-rpc-port; vLLM's default, 29550, is kept as the named constant of one place).
DP_RPC_PORT = 29550
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"


def vllm_objects(replica: Replica, *, lws_available: bool) -> list[dict[str, Any]]:
    """The objects of one vLLM or vllm-ascend replica, in apply order."""
    if not replica.multi_node:
        return [deployment(replica, _vllm_pod_template(replica, LEADER, [replica.placement.nodes[0].name]))]
    if lws_available:
        return [_leader_worker_set(replica)]
    return _vllm_statefulsets(replica)


def vllm_serve_args(
    dsd: DeepSeekDeployment,
    placement: ReplicaPlacement,
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    model_path: str,
) -> list[str]:
    """The ``vllm serve`` arguments for one replica (after ``vllm serve``), ending with the spec's extraArgs."""
    args = [
        model_path,
        "--served-model-name",
        model.id,
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
        "--tensor-parallel-size",
        str(placement.tensor_parallel),
    ]
    if placement.data_parallel > 1:
        local = placement.data_parallel // len(placement.nodes)
        args += ["--data-parallel-size", str(placement.data_parallel), "--data-parallel-size-local", str(local)]
        if len(placement.nodes) > 1:
            # The leader's own address; workers get theirs in _dp_worker_script. $(POD_IP) is expanded by kubelet.
            args += ["--data-parallel-address", "$(POD_IP)", "--data-parallel-rpc-port", str(DP_RPC_PORT)]
    elif placement.pipeline_parallel > 1:
        args += ["--pipeline-parallel-size", str(placement.pipeline_parallel), "--distributed-executor-backend", "ray"]
    args += [
        "--max-model-len",
        str(placement.max_model_len),
        "--gpu-memory-utilization",
        f"{dsd.spec.serving.gpu_memory_utilization:g}",
        "--trust-remote-code",
    ]
    if model.moe:
        args.append("--enable-expert-parallel")
    if placement.precision == Precision.FP8 and model.native_precision == Precision.BF16:
        args += ["--quantization", "fp8"]  # dynamic FP8 of a BF16 checkpoint
    serving = dsd.spec.serving
    if serving.kv_cache_dtype == KvCacheDtype.FP8:
        args += ["--kv-cache-dtype", "fp8"]
    if serving.speculative_decoding is not None:
        # "mtp" is v0.11's name; "deepseek_mtp" is accepted but rewritten with a deprecation warning.
        speculative = {"method": "mtp", "num_speculative_tokens": serving.speculative_decoding.num_speculative_tokens}
        args += ["--speculative-config", json.dumps(speculative, separators=(",", ":"))]
    args += ascend_serve_args(placement, accelerator)
    return args + list(dsd.spec.serving.extra_args)


def _vllm_parts(replica: Replica) -> PodParts:
    parts = model_parts(replica, needs_local_weights=False)
    if replica.ascend:
        add_ascend_host_mounts(parts)
    return parts


def _vllm_ports(role: str, *, multi_node: bool) -> list[dict[str, Any]]:
    ray = [{"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"}] if multi_node else []
    if role == WORKER:
        return ray
    # vLLM serves /metrics on its API port. A second entry naming 8000 "metrics" would be legal for the API
    # server but breaks server-side apply: (containerPort, protocol) is the list's merge key (kubernetes#113482).
    return [{"name": OPENAI_PORT_NAME, "containerPort": VLLM_PORT, "protocol": "TCP"}, *ray]


def _vllm_probes(replica: Replica) -> dict[str, dict[str, Any]]:
    startup = startup_failure_threshold(replica.model, Precision(replica.placement.precision))
    return {
        "startupProbe": http_probe("/health", OPENAI_PORT_NAME, period=PROBE_PERIOD_SECONDS, failures=startup),
        "readinessProbe": http_probe("/health", OPENAI_PORT_NAME, period=10, failures=3),
        "livenessProbe": http_probe("/health", OPENAI_PORT_NAME, period=20, failures=6, timeout=10),
    }


def _vllm_pod_template(
    replica: Replica, role: str, node_names: list[str], *, leader_address: str = ""
) -> dict[str, Any]:
    """A vLLM pod: single-node ``vllm serve``, or the Ray head + ``vllm serve`` (leader) / a Ray worker."""
    parts = _vllm_parts(replica)
    devices = devices_on(replica, 0 if role == LEADER else 1)
    serve_args = vllm_serve_args(replica.dsd, replica.placement, replica.model, replica.accelerator, parts.model_path)
    annotations: dict[str, str] = {}
    probes: dict[str, dict[str, Any]] = {}
    data_parallel = replica.placement.data_parallel > 1
    if not replica.multi_node or (data_parallel and role == LEADER):
        command, args = ["vllm", "serve"], serve_args
    elif data_parallel:
        local = replica.placement.data_parallel // replica.servers
        command, args = ["/bin/bash", "-c", _dp_worker_script(serve_args, leader_address, local)], None
    elif role == LEADER:
        command, args = ["/bin/bash", "-c", _ray_leader_script(replica.servers, serve_args)], None
    else:
        command, args = ["/bin/bash", "-c", _ray_worker_script(leader_address)], None
    if role == LEADER:
        annotations = prometheus_annotations(VLLM_PORT)
        probes = _vllm_probes(replica)
    container = engine_container(
        replica,
        parts=parts,
        devices=devices,
        command=command,
        args=args,
        env=[],
        ports=_vllm_ports(role, multi_node=replica.multi_node),
        probes=probes,
    )
    return pod_template(replica, role, node_names, container, parts, annotations=annotations)


def _ray_leader_script(group_size: int, serve_args: list[str]) -> str:
    """Start the Ray head, wait until the whole group has joined, then exec ``vllm serve`` with Ray."""
    count_nodes = (
        'python3 -c \'import ray; ray.init(address="auto", logging_level="ERROR"); '
        'print(sum(1 for n in ray.nodes() if n["Alive"]))\' 2>/dev/null'
    )
    return "\n".join(
        [
            "set -euo pipefail",
            f"ray start --head --port={RAY_PORT}",
            f'until [ "$({count_nodes})" -ge {group_size} ] 2>/dev/null; do',
            f'  echo "waiting for {group_size} Ray nodes"; sleep 5',
            "done",
            f"exec vllm serve {shlex.join(serve_args)}",
            "",
        ]
    )


def _dp_worker_script(serve_args: list[str], leader_address: str, local_ranks: int) -> str:
    """A data-parallel worker node: ``vllm serve --headless`` with its first rank, reaching the leader.

    LWS numbers a group's workers 1..size-1 (``LWS_WORKER_INDEX``); without LWS the worker StatefulSet's
    pods are ordinals 0..n-2 of ``<name>-w``, hence ``+ 1``.
    """
    args: list[str] = []
    skip = False
    for arg in serve_args:
        if skip:
            skip = False
            continue
        if arg == "--data-parallel-address":
            skip = True  # the leader's $(POD_IP): workers name the leader instead, below
            continue
        args.append(arg)
    return "\n".join(
        [
            "set -euo pipefail",
            f'LEADER="{leader_address}"',
            'INDEX="${LWS_WORKER_INDEX:-$(( ${HOSTNAME##*-} + 1 ))}"',
            f'exec vllm serve {shlex.join(args)} --data-parallel-address "${{LEADER}}" --headless '
            f'--data-parallel-start-rank "$(( INDEX * {local_ranks} ))"',
            "",
        ]
    )


def _ray_worker_script(leader_address: str) -> str:
    """Wait until the leader's Ray head answers, then join it and block (the pod lives as long as Ray)."""
    return "\n".join(
        [
            "set -euo pipefail",
            f'LEADER="{leader_address}"',
            f'until (exec 3<>"/dev/tcp/${{LEADER}}/{RAY_PORT}") 2>/dev/null; do',
            f'  echo "waiting for the Ray head at ${{LEADER}}:{RAY_PORT}"; sleep 5',
            "done",
            f'exec ray start --address="${{LEADER}}:{RAY_PORT}" --block',
            "",
        ]
    )


def _leader_worker_set(replica: Replica) -> dict[str, Any]:
    nodes = [node.name for node in replica.placement.nodes]
    leader = _vllm_pod_template(replica, LEADER, nodes[:1])
    worker = _vllm_pod_template(replica, WORKER, nodes[1:], leader_address="${LWS_LEADER_ADDRESS}")
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": replica.metadata(replica.name),
        "spec": {
            "replicas": 1,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": replica.servers,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def _vllm_statefulsets(replica: Replica) -> list[dict[str, Any]]:
    """Without LWS: a headless Service, a 1-pod leader StatefulSet and a worker StatefulSet of PP-1 pods.

    Two StatefulSets instead of one with identical pods: the leader is pinned to ``nodes[0]`` exactly and
    labelled ``dspool.io/role=leader``, so the DSD Service (equality selectors only) reaches it alone.
    """
    nodes = [node.name for node in replica.placement.nodes]
    address = leader_address(replica.name, replica.dsd.namespace)
    leader = _vllm_pod_template(replica, LEADER, nodes[:1])
    worker = _vllm_pod_template(replica, WORKER, nodes[1:], leader_address=address)
    pp = replica.servers
    return [
        headless_service(replica, [{"name": "ray", "port": RAY_PORT, "targetPort": RAY_PORT, "protocol": "TCP"}]),
        statefulset(replica, replica.name, LEADER, 1, leader),
        statefulset(replica, replica.worker_name, WORKER, pp - 1, worker),
    ]
