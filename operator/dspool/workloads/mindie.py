"""MindIE Service: the generated ``config.json``, its start script, the HCCL rank table and the objects.

One node: a ConfigMap (``config.json`` + start script) and a Deployment. Several nodes (910 series): the
ConfigMap, a headless Service and the leader/worker StatefulSet pair, with ``multiNodesInferEnabled`` and an
HCCL rank table (``hccl.json``) mounted from the ConfigMap ``rings-config-<name>``.

Who writes the rank table: dspool, unless MindCluster is installed. On every pass dspool rebuilds each
multi-node replica's table from its current pods, as the Ascend device plugin annotated them
(:func:`rank_table_from_pods`), and applies it as ``rings-config-<name>``; ``{"status": "initializing"}``
until every pod has an IP and its NPUs' addresses. When MindCluster's ascend-operator is installed (its CRD
:data:`MINDCLUSTER_CRD` is served) it writes that ConfigMap itself and dspool writes none.

Key layout and defaults of ``config.json`` follow the MindIE Service configuration reference
(``conf/config.json``): ``ServerConfig`` (listen addresses and ports), ``BackendConfig`` (devices,
multi-node switches) with ``ModelDeployConfig`` / ``ModelConfig`` (the model) and ``ScheduleConfig``
(batching) nested inside it.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from dspool.api import ROLE_LABEL
from dspool.catalog import Precision
from dspool.workloads.common import (
    LEADER,
    METRICS_PORT_NAME,
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
    model_parts,
    pod_template,
    prometheus_annotations,
    startup_failure_threshold,
    statefulset,
)

MINDIE_API_PORT = 1025
MINDIE_MANAGEMENT_PORT = 1026
MINDIE_METRICS_PORT = 1027
MINDIE_MULTI_NODE_PORT = 1120

MINDIE_HOME = "/usr/local/Ascend/mindie/latest/mindie-service"
MINDIE_DAEMON = f"{MINDIE_HOME}/bin/mindieservice_daemon"
MINDIE_CONFIG_PATH = f"{MINDIE_HOME}/conf/config.json"
CONFIG_TEMPLATE_DIR = "/etc/dspool/mindie"
CONFIG_TEMPLATE_KEY = "config.json"
START_SCRIPT_KEY = "start.sh"

# MindCluster's convention for where a pod finds its HCCL rank table.
RANK_TABLE_DIR = "/user/serverid/devindex/config"
RANK_TABLE_PATH = f"{RANK_TABLE_DIR}/hccl.json"
RANK_TABLE_KEY = "hccl.json"
RANK_TABLE_PENDING = {"status": "initializing"}

# The Ascend device plugin writes each pod's allocated NPUs with their RoCE addresses here, as JSON
# {"pod_name", "server_id" (the pod UID), "host_ip", "devices": [{"device_id", "device_ip"}]}:
# mind-cluster component/ascend-common/api/default_name.go (Pod910DeviceAnno) and
# component/ascend-device-plugin/pkg/common/proto.go (Instance, Device), written by AddPodAnnotation.
ASCEND_DEVICE_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
# MindCluster's ascend-operator writes rank tables itself (ConfigMap rings-config-<job>, key hccl.json);
# its CRD tells that it is installed.
MINDCLUSTER_CRD = "ascendjobs.mindxdl.gitee.com"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"  # orders a LeaderWorkerSet's workers

# MindCluster recognises multi-node Ascend jobs by this pod label.
RING_CONTROLLER_LABEL = "ring-controller.atlas"
RING_CONTROLLER_VALUE = "ascend-910b"

# Replaced at start by the pod IP (MIES_CONTAINER_IP, from the downward API). MindIE's defaults,
# 127.0.0.1 / 127.0.0.2, listen on loopback only, so kubelet probes and the Service could not reach it.
POD_IP_PLACEHOLDER = "__DSPOOL_POD_IP__"

# Scripts sourced before the daemon starts, when present: CANN toolkit, ATB kernels, ATB models, MindIE.
SET_ENV_SCRIPTS = (
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",
    "/usr/local/Ascend/nnal/atb/set_env.sh",
    "/usr/local/Ascend/atb-models/set_env.sh",
    "/usr/local/Ascend/mindie/set_env.sh",
)

DEFAULT_MAX_BATCH_SIZE = 200
DEFAULT_MAX_PREFILL_BATCH_SIZE = 50
DEFAULT_MAX_PREFILL_TOKENS = 8192
CACHE_BLOCK_SIZE = 128


def build_mindie_config(
    *,
    model_name: str,
    weight_path: str,
    tensor_parallel: int,
    max_model_len: int,
    multi_node: bool,
) -> dict[str, Any]:
    """The MindIE ``config.json`` for one engine instance of ``tensor_parallel`` NPUs per node.

    ``ipAddress`` and ``managementIpAddress`` hold :data:`POD_IP_PLACEHOLDER`; the start script swaps
    in the pod IP. HTTPS and inter-node TLS are off: traffic stays inside the cluster network, and
    turning them on needs certificates in the image. In multi-node mode MindIE derives devices and
    world size from the rank table; the per-node values are still written for readability.
    """
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    return {
        "Version": "1.0.0",
        "ServerConfig": _server_config(),
        "BackendConfig": {
            "backendName": "mindieservice_llm_engine",
            "modelInstanceNumber": 1,
            "npuDeviceIds": [list(range(tensor_parallel))],
            "tokenizerProcessNumber": 8,
            "multiNodesInferEnabled": multi_node,
            "multiNodesInferPort": MINDIE_MULTI_NODE_PORT,
            "interNodeTLSEnabled": False,
            "ModelDeployConfig": _model_deploy_config(model_name, weight_path, tensor_parallel, max_model_len),
            "ScheduleConfig": _schedule_config(max_model_len),
        },
    }


def _max_input_tokens(max_model_len: int) -> int:
    return max_model_len - 1  # MindIE caps maxInputTokenLen at maxSeqLen - 1


def _server_config() -> dict[str, Any]:
    """``ServerConfig``: listen on the pod IP (the placeholder) with dspool's ports; HTTPS and TLS off."""
    return {
        "ipAddress": POD_IP_PLACEHOLDER,
        "managementIpAddress": POD_IP_PLACEHOLDER,
        "port": MINDIE_API_PORT,
        "managementPort": MINDIE_MANAGEMENT_PORT,
        "metricsPort": MINDIE_METRICS_PORT,
        "allowAllZeroIpListening": False,
        "maxLinkNum": 1000,
        "httpsEnabled": False,
        "fullTextEnabled": False,
        "inferMode": "standard",
        "interCommTLSEnabled": False,
        "openAiSupport": "vllm",
        "tokenTimeout": 600,
        "e2eTimeout": 600,
        "distDPServerEnabled": False,
    }


def _model_deploy_config(model_name: str, weight_path: str, tensor_parallel: int, max_model_len: int) -> dict[str, Any]:
    """``BackendConfig.ModelDeployConfig``: the sequence limits and the one model, its weights and world size."""
    return {
        "maxSeqLen": max_model_len,
        "maxInputTokenLen": _max_input_tokens(max_model_len),
        "truncation": False,
        "ModelConfig": [
            {
                "modelInstanceType": "Standard",
                "modelName": model_name,
                "modelWeightPath": weight_path,
                "worldSize": tensor_parallel,
                "cpuMemSize": 5,
                "npuMemSize": -1,
                "backendType": "atb",
                "trustRemoteCode": False,
            }
        ],
    }


def _schedule_config(max_model_len: int) -> dict[str, Any]:
    """``BackendConfig.ScheduleConfig``: batching; a prefill batch holds at least one longest input."""
    return {
        "templateType": "Standard",
        "templateName": "Standard_LLM",
        "cacheBlockSize": CACHE_BLOCK_SIZE,
        "maxPrefillBatchSize": DEFAULT_MAX_PREFILL_BATCH_SIZE,
        "maxPrefillTokens": max(DEFAULT_MAX_PREFILL_TOKENS, _max_input_tokens(max_model_len)),
        "prefillTimeMsPerReq": 150,
        "prefillPolicyType": 0,
        "decodeTimeMsPerReq": 50,
        "decodePolicyType": 0,
        "maxBatchSize": DEFAULT_MAX_BATCH_SIZE,
        "maxIterTimes": max_model_len,
        "maxPreemptCount": 0,
        "supportSelectBatch": False,
        "maxQueueDelayMicroseconds": 5000,
    }


def build_rank_table(
    server_ips: Sequence[str],
    device_ips_per_server: Sequence[Sequence[str]],
    *,
    container_ips: Sequence[str] | None = None,
    device_ids_per_server: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """An HCCL rank table (``hccl.json``) for MindIE multi-node inference, for clusters without MindCluster.

    ``server_ips[k]`` is server k's address (the first is the master that serves requests: put the
    leader pod first); ``device_ips_per_server[k]`` lists the RoCE addresses of its NPUs in device order
    (``/etc/hccn.conf`` on the host, ``address_<i>``), ``device_ids_per_server[k]`` their physical ids
    (``device_id`` is "处理器的物理ID", the ``/dev/davinci<N>`` number, per CANN's rank-table reference;
    default 0..n-1, a whole server). ``container_ips`` defaults to ``server_ips`` (pod IPs on a pod network).
    Every value is a string and rank ids run 0..N-1 over all devices, as HCCL wants.
    """
    if not server_ips:
        raise ValueError("a rank table needs at least one server")
    if len(device_ips_per_server) != len(server_ips):
        raise ValueError(
            f"{len(server_ips)} servers but device IPs for {len(device_ips_per_server)}; give one list per server"
        )
    containers = list(container_ips) if container_ips is not None else list(server_ips)
    if len(containers) != len(server_ips):
        raise ValueError(f"{len(server_ips)} servers but {len(containers)} container IPs")
    if len(set(server_ips)) != len(server_ips):
        raise ValueError(f"server IPs must be distinct: {list(server_ips)}")
    sizes = {len(devices) for devices in device_ips_per_server}
    if 0 in sizes:
        raise ValueError("every server needs at least one device IP")
    if len(sizes) > 1:
        raise ValueError(f"every server must contribute the same number of NPUs, got {sorted(sizes)}")
    ids = (
        [list(server) for server in device_ids_per_server]
        if device_ids_per_server is not None
        else [list(range(len(devices))) for devices in device_ips_per_server]
    )
    if [len(server) for server in ids] != [len(devices) for devices in device_ips_per_server]:
        raise ValueError("every server needs one device id per device IP")
    server_list: list[dict[str, Any]] = []
    rank = 0
    for server_ip, container_ip, device_ips, device_ids in zip(
        server_ips, containers, device_ips_per_server, ids, strict=True
    ):
        devices = []
        for device_id, device_ip in zip(device_ids, device_ips, strict=True):
            devices.append({"device_id": str(device_id), "device_ip": str(device_ip), "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": str(server_ip), "container_ip": str(container_ip), "device": devices})
    return {
        "version": "1.0",
        "server_count": str(len(server_list)),
        "server_list": server_list,
        "status": "completed",
    }


# What a multi-node MindIE pod exports besides MIES_CONTAINER_IP, each from Huawei's own sources
# (docs/workloads.md, "Multi-node MindIE environment"): the rank table under all three names the releases
# read (MindIE-LLM's server reads RANK_TABLE_FILE, 1.0-2.0 releases and the DeepSeek READMEs RANKTABLEFILE,
# MindIE-Motor's k8s boot.sh exports MIES_RANKTABLEFILE too), and the HCCL settings of the DeepSeek READMEs
# and the k8s boot script.
MULTI_NODE_ENV: tuple[tuple[str, str], ...] = (
    ("RANK_TABLE_FILE", RANK_TABLE_PATH),
    ("RANKTABLEFILE", RANK_TABLE_PATH),
    ("MIES_RANKTABLEFILE", RANK_TABLE_PATH),
    ("ATB_LLM_HCCL_ENABLE", "1"),
    ("HCCL_CONNECT_TIMEOUT", "7200"),
    ("HCCL_EXEC_TIMEOUT", "0"),
    ("HCCL_RDMA_RETRY_CNT", "7"),
    ("HCCL_RDMA_TIMEOUT", "18"),
    ("HCCL_DETERMINISTIC", "true"),
    ("OMP_NUM_THREADS", "1"),
    ("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True"),
)


def multi_node_env() -> list[dict[str, Any]]:
    """The environment of every pod of a multi-node MindIE replica (besides the pod IPs)."""
    pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
    return [
        {"name": "MIES_CONTAINER_MANAGEMENT_IP", "valueFrom": pod_ip},
        *({"name": name, "value": value} for name, value in MULTI_NODE_ENV),
    ]


def mindie_start_script(*, multi_node: bool) -> str:
    """The container's start script: set up the Ascend environment, render config.json, exec the daemon.

    The ConfigMap copy of ``config.json`` is read-only and holds :data:`POD_IP_PLACEHOLDER`; the script
    writes the pod's copy with ``$MIES_CONTAINER_IP`` in its place, mode 640 (MindIE refuses group- or
    world-writable configuration files). Multi-node pods first wait for a completed rank table at
    ``$RANK_TABLE_FILE``: it can only be written once every pod of the group has an IP.
    """
    sources = "\n".join(f"if [ -f {path} ]; then source {path}; fi" for path in SET_ENV_SCRIPTS)
    template = shlex.quote(f"{CONFIG_TEMPLATE_DIR}/{CONFIG_TEMPLATE_KEY}")
    lines = [
        "#!/bin/bash",
        "# Generated by dspool: start MindIE Service with the pod IP in config.json.",
        "# The vendor set_env.sh scripts are sourced before errexit: some return non-zero harmlessly.",
        sources,
        "set -eo pipefail",
        ': "${MIES_CONTAINER_IP:?MIES_CONTAINER_IP (the pod IP) must be set}"',
        f'sed "s/{POD_IP_PLACEHOLDER}/${{MIES_CONTAINER_IP}}/g" {template} > {MINDIE_CONFIG_PATH}',
        f"chmod 640 {MINDIE_CONFIG_PATH}",
    ]
    if multi_node:
        lines += [
            'echo "waiting for a completed rank table at ${RANK_TABLE_FILE}"',
            "until python3 -c 'import json, os, sys; "
            'sys.exit(json.load(open(os.environ["RANK_TABLE_FILE"])).get("status") != "completed")'
            "' 2>/dev/null; do sleep 5; done",
        ]
    lines += [f"cd {MINDIE_HOME}", f"exec {MINDIE_DAEMON}", ""]
    return "\n".join(lines)


def _pod_order(pod: Mapping[str, Any]) -> tuple[int, int, str]:
    """Leader first, then workers by index (LWS's worker-index label, else the StatefulSet ordinal)."""
    metadata = pod.get("metadata", {})
    labels = metadata.get("labels") or {}
    name = str(metadata.get("name", ""))
    if labels.get(ROLE_LABEL) == LEADER:
        return (0, 0, name)
    index = labels.get(LWS_WORKER_INDEX_LABEL)
    if index is None:
        ordinal = re.search(r"-(\d+)$", name)
        index = ordinal.group(1) if ordinal else "0"
    return (1, int(index) if str(index).isdigit() else 0, name)


def rank_table_from_pods(pods: Sequence[Mapping[str, Any]], servers: int) -> dict[str, Any] | None:
    """The completed rank table of one multi-node MindIE replica, from its pods as the device plugin
    annotated them; None until all ``servers`` pods exist, have an IP and carry their NPUs' addresses.

    Servers are in pod order (the leader first: it is MindIE's master); a server's id is its host IP (the
    annotation's ``host_ip``, else the pod's ``hostIP``), its container IP the pod IP; devices in device-id
    order, with the physical ids the device plugin allocated (not renumbered). A replaced pod changes the
    table, so it is rebuilt from the pods every time.
    """
    live = [pod for pod in pods if not pod.get("metadata", {}).get("deletionTimestamp")]
    if len(live) != servers:
        return None
    server_ips, container_ips, device_ips, device_ids = [], [], [], []
    for pod in sorted(live, key=_pod_order):
        raw = (pod.get("metadata", {}).get("annotations") or {}).get(ASCEND_DEVICE_ANNOTATION)
        status = pod.get("status") or {}
        try:
            allocated = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(allocated, dict) or not status.get("podIP"):
            return None
        devices = allocated.get("devices") or []
        try:
            ordered = sorted(devices, key=lambda device: int(device["device_id"]))
            addresses = [str(device["device_ip"]) for device in ordered]
            physical = [int(device["device_id"]) for device in ordered]
        except (KeyError, TypeError, ValueError):
            return None
        if not addresses:
            return None
        server_ips.append(str(allocated.get("host_ip") or status.get("hostIP") or status["podIP"]))
        container_ips.append(str(status["podIP"]))
        device_ips.append(addresses)
        device_ids.append(physical)
    try:
        return build_rank_table(server_ips, device_ips, container_ips=container_ips, device_ids_per_server=device_ids)
    except ValueError:
        return None  # e.g. two pods reporting one host: wait for consistent annotations


def mindie_objects(replica: Replica, rank_table_pods: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The objects of one MindIE replica, in apply order (ConfigMaps and Services first).

    ``rank_table_pods``: the replica's current pods, or None when MindCluster is installed. For a multi-node
    replica, pods (even none yet) add the ConfigMap ``rings-config-<name>`` with the rank table built from
    them; None adds no rank table (MindCluster writes it). A single-node replica has no rank table.
    """
    objects = _mindie_objects(replica)
    if replica.multi_node and rank_table_pods is not None:
        objects.insert(1, _rank_table_config_map(replica, rank_table_pods))
    return objects


def mindie_config_map_name(replica_name: str) -> str:
    """The ConfigMap holding a MindIE replica's ``config.json`` and start script."""
    return f"{replica_name}-mindie"


def rank_table_config_map_name(replica_name: str) -> str:
    """The ConfigMap a multi-node MindIE replica reads its rank table (``hccl.json``) from.

    ``rings-config-<name>`` is the name MindCluster's ascend-operator writes for a job; on clusters without
    it dspool writes the table itself (:func:`rank_table_from_pods`).
    """
    return f"rings-config-{replica_name}"


def _rank_table_config_map(replica: Replica, pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    table = rank_table_from_pods(pods, replica.servers) or RANK_TABLE_PENDING
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": replica.metadata(rank_table_config_map_name(replica.name)),
        "data": {RANK_TABLE_KEY: json.dumps(table, indent=2) + "\n"},
    }


def _mindie_objects(replica: Replica) -> list[dict[str, Any]]:
    """The ConfigMap and workloads of one MindIE replica: a Deployment on one node; on several, a headless
    Service and the leader/worker StatefulSet pair (:func:`mindie_objects` adds the rank table)."""
    parts = model_parts(replica, needs_local_weights=True)
    add_ascend_host_mounts(parts)
    config_map = _mindie_config_map(replica, parts.model_path)
    _mount_mindie_config(replica, parts)
    env = _mindie_env(replica)
    extra_labels: dict[str, str] = {}
    if replica.multi_node:
        _mount_rank_table(replica, parts)
        env += multi_node_env()
        extra_labels[RING_CONTROLLER_LABEL] = RING_CONTROLLER_VALUE
    ports = _mindie_ports()
    probes = _mindie_probes(replica)
    command = ["/bin/bash", f"{CONFIG_TEMPLATE_DIR}/{START_SCRIPT_KEY}"]
    nodes = [node.name for node in replica.placement.nodes]

    def template(role: str, node_names: list[str], devices: int) -> dict[str, Any]:
        container = engine_container(
            replica,
            parts=parts,
            devices=devices,
            command=command,
            args=None,
            env=env,
            ports=ports,
            # Only the master (leader) serves the API; workers' health is seen through the leader's readiness.
            probes=probes if role == LEADER else {},
        )
        annotations = prometheus_annotations(MINDIE_METRICS_PORT) if role == LEADER else {}
        pod = pod_template(
            replica, role, node_names, container, parts, extra_labels=extra_labels, annotations=annotations
        )
        return copy.deepcopy(pod)  # leader and worker templates must not share mutable lists

    if not replica.multi_node:
        return [config_map, deployment(replica, template(LEADER, nodes, devices_on(replica, 0)))]
    headless_ports = [
        {"name": "multinode", "port": MINDIE_MULTI_NODE_PORT, "targetPort": MINDIE_MULTI_NODE_PORT, "protocol": "TCP"}
    ]
    return [
        config_map,
        headless_service(replica, headless_ports),
        statefulset(replica, replica.name, LEADER, 1, template(LEADER, nodes[:1], devices_on(replica, 0))),
        statefulset(
            replica,
            replica.worker_name,
            WORKER,
            replica.servers - 1,
            template(WORKER, nodes[1:], devices_on(replica, 1)),
        ),
    ]


def _mindie_config_map(replica: Replica, weight_path: str) -> dict[str, Any]:
    """The ConfigMap holding the replica's ``config.json`` template and start script."""
    config = build_mindie_config(
        model_name=replica.model.id,
        weight_path=weight_path,
        tensor_parallel=devices_on(replica, 0),
        max_model_len=replica.placement.max_model_len,
        multi_node=replica.multi_node,
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": replica.metadata(mindie_config_map_name(replica.name)),
        "data": {
            CONFIG_TEMPLATE_KEY: json.dumps(config, indent=2, sort_keys=False) + "\n",
            START_SCRIPT_KEY: mindie_start_script(multi_node=replica.multi_node),
        },
    }


def _mount_mindie_config(replica: Replica, parts: PodParts) -> None:
    """Mount the ConfigMap read-only; the start script writes the pod's own ``config.json`` from it."""
    config_map_name = mindie_config_map_name(replica.name)
    parts.volumes.append({"name": "mindie-config", "configMap": {"name": config_map_name, "defaultMode": 0o440}})
    parts.mounts.append({"name": "mindie-config", "mountPath": CONFIG_TEMPLATE_DIR, "readOnly": True})


def _mindie_env(replica: Replica) -> list[dict[str, Any]]:
    """The environment of every MindIE pod: the pod IP to listen on, monitoring on, the NPU memory share."""
    return [
        {"name": "MIES_CONTAINER_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MIES_SERVICE_MONITOR_MODE", "value": "1"},
        {"name": "NPU_MEMORY_FRACTION", "value": f"{replica.dsd.spec.serving.gpu_memory_utilization:g}"},
    ]


def _mount_rank_table(replica: Replica, parts: PodParts) -> None:
    """Mount the rank table ConfigMap where MindCluster's convention puts it (optional: it may not exist yet)."""
    parts.volumes.append(
        {
            "name": "rank-table",
            "configMap": {"name": rank_table_config_map_name(replica.name), "optional": True, "defaultMode": 0o640},
        }
    )
    parts.mounts.append({"name": "rank-table", "mountPath": RANK_TABLE_DIR, "readOnly": True})


def _mindie_ports() -> list[dict[str, Any]]:
    """The container's ports: the OpenAI API, management (health), metrics and the multi-node port."""
    return [
        {"name": OPENAI_PORT_NAME, "containerPort": MINDIE_API_PORT, "protocol": "TCP"},
        {"name": "management", "containerPort": MINDIE_MANAGEMENT_PORT, "protocol": "TCP"},
        {"name": METRICS_PORT_NAME, "containerPort": MINDIE_METRICS_PORT, "protocol": "TCP"},
        {"name": "multinode", "containerPort": MINDIE_MULTI_NODE_PORT, "protocol": "TCP"},
    ]


def _mindie_probes(replica: Replica) -> dict[str, dict[str, Any]]:
    """The leader's probes, on the management port; the startup probe waits as long as the model loads."""
    return {
        "startupProbe": http_probe(
            "/v2/health/live",
            "management",
            period=PROBE_PERIOD_SECONDS,
            failures=startup_failure_threshold(replica.model, Precision(replica.placement.precision)),
        ),
        "readinessProbe": http_probe("/v2/health/ready", "management", period=10, failures=3),
        "livenessProbe": http_probe("/v2/health/live", "management", period=20, failures=6, timeout=10),
    }
