"""Kubernetes objects that serve one DeepSeekDeployment: pure builders from a placement to plain dicts.

Nothing here talks to the API server. The controller hands in the DSD, one :class:`ReplicaPlacement`
(which nodes, how many devices, the TP x PP layout) and the catalog entries; it gets back manifests to
apply. Every object carries an owner reference to the DSD (deleted with it), the dspool labels and the
placement's spec hash. See ``docs/workloads.md`` for what each backend gets and why.

Per replica:

- vLLM / vllm-ascend on one node: a Deployment (``vllm serve``);
- vLLM / vllm-ascend on several nodes (pipeline parallel): a LeaderWorkerSet running a Ray cluster when
  LWS is installed, else a leader StatefulSet, a worker StatefulSet and a headless Service;
- MindIE: a ConfigMap (``config.json`` + start script) and a Deployment, or on several nodes the two
  StatefulSets and the headless Service, with ``multiNodesInferEnabled`` and an HCCL rank table.

One ClusterIP Service per DSD (:func:`build_service`) selects the leader pods of every replica on the
container port *named* ``openai``, so replicas on different backends share it.
"""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from dspool.api import (
    API_VERSION,
    DEPLOYMENT_LABEL,
    KIND,
    MANAGED_BY_LABEL,
    MANAGER,
    MAX_LABEL_VALUE,
    PLACEMENT_LABEL,
    REPLICA_LABEL,
    ROLE_LABEL,
    DeepSeekDeployment,
    ReplicaPlacement,
    deployment_label_value,
    dns_label,
    placement_fingerprint,
)
from dspool.catalog import AcceleratorSpec, ModelSpec, Precision, Vendor
from dspool.mindie import (
    CONFIG_TEMPLATE_DIR,
    CONFIG_TEMPLATE_KEY,
    MINDIE_API_PORT,
    MINDIE_MANAGEMENT_PORT,
    MINDIE_METRICS_PORT,
    MINDIE_MULTI_NODE_PORT,
    RANK_TABLE_DIR,
    RANK_TABLE_KEY,
    RANK_TABLE_PATH,
    RANK_TABLE_PENDING,
    START_SCRIPT_KEY,
    build_mindie_config,
    mindie_start_script,
    rank_table_from_pods,
)
from dspool.sizing import Backend

MODEL_NAME_LABEL = "app.kubernetes.io/name"
SPEC_HASH_ANNOTATION = "dspool.io/spec-hash"
HOSTNAME_LABEL = "kubernetes.io/hostname"
NODE_NAME_FIELD = "metadata.name"
LEADER = "leader"
WORKER = "worker"

# MindCluster recognises multi-node Ascend jobs by this pod label.
RING_CONTROLLER_LABEL = "ring-controller.atlas"
RING_CONTROLLER_VALUE = "ascend-910b"

VLLM_PORT = 8000
RAY_PORT = 6379
SERVICE_PORT = 8000  # clients use :8000 whatever the backend; targetPort is the port named "openai"
METRICS_SERVICE_PORT = 9090
OPENAI_PORT_NAME = "openai"
METRICS_PORT_NAME = "metrics"
ENGINE_CONTAINER = "engine"

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"

MAX_OBJECT_NAME = 47
"""Longest replica object name: leaves room for ``-w`` (worker StatefulSet), a pod ordinal and the
StatefulSet's ``controller-revision-hash`` label value (name + ``-`` + 10 characters <= 63)."""

MODEL_MOUNT_PATH = "/models"
HF_CACHE_PATH = "/root/.cache/huggingface"
ASCEND_HOST_PATHS = ("/usr/local/Ascend/driver", "/usr/local/dcmi")

LARGE_MODEL_PARAMS_B = 100  # above this, loading takes tens of minutes
LARGE_MODEL_STARTUP_MINUTES = 60
STARTUP_MINUTES = 20
PROBE_PERIOD_SECONDS = 10

# Default CPU/memory requests per device the pod holds; no limits (see docs/workloads.md).
DEFAULT_CPU_PER_DEVICE = 4
DEFAULT_MEMORY_GIB_PER_DEVICE = 32
MIN_DEFAULT_CPU = 4
MIN_DEFAULT_MEMORY_GIB = 32


@dataclass(frozen=True)
class ImageDefaults:
    """Default engine images, by repository and tag only: the cluster's registry or mirror supplies the host."""

    vllm: str = "vllm/vllm-openai:v0.11.0"
    vllm_ascend: str = "ascend/vllm-ascend:v0.11.0rc0"
    vllm_ascend_310p: str = "ascend/vllm-ascend:v0.11.0rc0-310p"
    mindie: str = "ascendhub/mindie:2.1.RC1-800I-A2-py311-openeuler24.03-lts"
    mindie_310p: str = "ascendhub/mindie:2.1.RC1-300I-Duo-py311-openeuler24.03-lts"
    downloader: str = "python:3.12-slim"


DEFAULT_IMAGES = ImageDefaults()
IMAGE_ENV_PREFIX = "DSPOOL_IMAGE_"


def images_from_env(env: Mapping[str, str], base: ImageDefaults = DEFAULT_IMAGES) -> ImageDefaults:
    """``base`` with each image overridden by ``DSPOOL_IMAGE_<FIELD>`` (e.g. ``DSPOOL_IMAGE_VLLM_ASCEND``) when set."""
    overrides = {
        field.name: env[key]
        for field in fields(ImageDefaults)
        if (key := IMAGE_ENV_PREFIX + field.name.upper()) in env and env[key].strip()
    }
    return ImageDefaults(**{**{f.name: getattr(base, f.name) for f in fields(ImageDefaults)}, **overrides})


# --------------------------------------------------------------------------------------------- names


def replica_object_name(dsd_name: str, replica: int) -> str:
    """Name of replica ``replica``'s objects: ``<dsd>-<replica>``, a DNS label of at most 47 characters.

    Long or non-DNS-1035 DSD names (dots, a leading digit) are shortened/cleaned and given a hash suffix,
    so the name stays unique per DSD; 47 leaves room for the suffixes Kubernetes adds to pod names.
    """
    if replica < 0:
        raise ValueError(f"replica must be >= 0, got {replica}")
    suffix = f"-{replica}"
    return dns_label(dsd_name, MAX_OBJECT_NAME - len(suffix)) + suffix


def service_name(dsd: DeepSeekDeployment) -> str:
    """The DSD's ClusterIP Service name: the DSD name (cleaned into a DNS label when it is not one)."""
    return dns_label(dsd.name, MAX_LABEL_VALUE)


def serving_port(backend: Backend | str) -> int:
    """The engine's OpenAI-compatible API port in the container: 8000 for vLLM/vllm-ascend, 1025 for MindIE."""
    return MINDIE_API_PORT if Backend(backend) == Backend.MINDIE else VLLM_PORT


def metrics_port(backend: Backend | str) -> int:
    """The container port serving Prometheus metrics: vLLM's API port, MindIE's metricsPort 1027."""
    return MINDIE_METRICS_PORT if Backend(backend) == Backend.MINDIE else VLLM_PORT


def service_selector(dsd: DeepSeekDeployment) -> dict[str, str]:
    """Labels of the pods that answer requests: every replica's leader (single-node pods are leaders too)."""
    return {DEPLOYMENT_LABEL: deployment_label_value(dsd.name), ROLE_LABEL: LEADER}


def endpoint_url(dsd: DeepSeekDeployment) -> str:
    """The in-cluster OpenAI base URL: ``http://<service>.<namespace>.svc:8000/v1``."""
    return f"http://{service_name(dsd)}.{dsd.namespace}.svc:{SERVICE_PORT}/v1"


def owner_reference(dsd: DeepSeekDeployment) -> dict[str, Any]:
    """The controller owner reference that makes Kubernetes garbage-collect an object with its DSD."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": dsd.name,
        "uid": str(dsd.metadata.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ------------------------------------------------------------------------------------------- service


def build_service(dsd: DeepSeekDeployment) -> dict[str, Any]:
    """The DSD's ClusterIP Service: port ``openai`` (8000) and ``metrics`` (9090) on every replica's leader.

    Target ports are by name, so a vLLM replica (8000) and a MindIE replica (1025) behind one Service
    both work. ``metrics`` reaches MindIE's metricsPort (1027); vLLM has no separate metrics port and
    serves ``/metrics`` on ``openai``. Pod annotations ``prometheus.io/port`` name the right port per pod.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(dsd),
            "namespace": dsd.namespace,
            "labels": {
                DEPLOYMENT_LABEL: deployment_label_value(dsd.name),
                MANAGED_BY_LABEL: MANAGER,
                MODEL_NAME_LABEL: dsd.spec.model,
            },
            "ownerReferences": [owner_reference(dsd)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": service_selector(dsd),
            "ports": [
                {
                    "name": OPENAI_PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": OPENAI_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
                {
                    "name": METRICS_PORT_NAME,
                    "port": METRICS_SERVICE_PORT,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
            ],
        },
    }


# ------------------------------------------------------------------------------------------ replicas


@dataclass(frozen=True)
class _Replica:
    """Everything one replica's builders need, with the derived names and labels."""

    dsd: DeepSeekDeployment
    placement: ReplicaPlacement
    model: ModelSpec
    accelerator: AcceleratorSpec
    images: ImageDefaults

    @property
    def name(self) -> str:
        return replica_object_name(self.dsd.name, self.placement.replica)

    @property
    def worker_name(self) -> str:
        return f"{self.name}-w"

    @property
    def backend(self) -> Backend:
        return Backend(self.placement.backend)

    @property
    def multi_node(self) -> bool:
        return self.placement.pipeline_parallel > 1

    @property
    def is_310p(self) -> bool:
        return self.accelerator.architecture == "ascend-310p"

    @property
    def ascend(self) -> bool:
        return self.accelerator.vendor == Vendor.ASCEND

    def labels(self) -> dict[str, str]:
        return {
            DEPLOYMENT_LABEL: deployment_label_value(self.dsd.name),
            REPLICA_LABEL: str(self.placement.replica),
            MANAGED_BY_LABEL: MANAGER,
            MODEL_NAME_LABEL: self.model.id,
        }

    def group_selector(self) -> dict[str, str]:
        """Labels shared by exactly this replica's pods."""
        return {DEPLOYMENT_LABEL: deployment_label_value(self.dsd.name), REPLICA_LABEL: str(self.placement.replica)}

    def annotations(self) -> dict[str, str]:
        return {SPEC_HASH_ANNOTATION: self.placement.spec_hash}

    def metadata(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.dsd.namespace,
            "labels": self.labels(),
            "annotations": self.annotations(),
            "ownerReferences": [owner_reference(self.dsd)],
        }

    def image(self) -> str:
        if self.dsd.spec.serving.image:
            return self.dsd.spec.serving.image
        if self.backend == Backend.MINDIE:
            return self.images.mindie_310p if self.is_310p else self.images.mindie
        if self.backend == Backend.VLLM_ASCEND:
            return self.images.vllm_ascend_310p if self.is_310p else self.images.vllm_ascend
        return self.images.vllm


def build_replica_objects(
    dsd: DeepSeekDeployment,
    placement: ReplicaPlacement,
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    *,
    lws_available: bool,
    images: ImageDefaults = DEFAULT_IMAGES,
    rank_table_pods: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The objects that run one replica on its planned nodes, in apply order (ConfigMaps and Services first).

    ``rank_table_pods``: for a multi-node MindIE replica on a cluster without MindCluster, the replica's
    current pods; dspool then writes its HCCL rank table (``status: completed`` once every pod carries
    its NPUs' addresses, ``initializing`` before). None leaves the table to MindCluster.

    Raises ValueError for a placement that cannot be served as given: a backend on the wrong vendor,
    a node count that is not the pipeline-parallel size, or a multi-node replica on Ascend 310P.
    """
    replica = _Replica(dsd, placement, model, accelerator, images)
    _check_placement(replica)
    if replica.backend == Backend.MINDIE:
        objects = _mindie_objects(replica)
        if replica.multi_node and rank_table_pods is not None:
            objects.insert(1, _rank_table_config_map(replica, rank_table_pods))
        return objects
    if not replica.multi_node:
        return [_deployment(replica, _vllm_pod_template(replica, LEADER, [placement.nodes[0].name]))]
    if lws_available:
        return [_leader_worker_set(replica)]
    return _vllm_statefulsets(replica)


def _check_placement(replica: _Replica) -> None:
    placement = replica.placement
    vendor = replica.accelerator.vendor
    if replica.backend == Backend.VLLM and vendor != Vendor.NVIDIA:
        raise ValueError(f"backend vllm needs NVIDIA GPUs, {replica.accelerator.id} is {vendor.value}")
    if replica.backend in (Backend.MINDIE, Backend.VLLM_ASCEND) and vendor != Vendor.ASCEND:
        raise ValueError(
            f"backend {replica.backend.value} needs Ascend NPUs, {replica.accelerator.id} is {vendor.value}"
        )
    if len(placement.nodes) != placement.pipeline_parallel:
        raise ValueError(
            f"replica {placement.replica}: {len(placement.nodes)} nodes for pipeline-parallel size "
            f"{placement.pipeline_parallel}; one pipeline stage per node"
        )
    if replica.multi_node and (replica.is_310p or not replica.accelerator.multi_node):
        raise ValueError(f"{replica.accelerator.id} does not run multi-node inference; plan one node per replica")
    if len({node.name for node in placement.nodes}) != len(placement.nodes):
        raise ValueError(f"replica {placement.replica}: a node appears twice in {[n.name for n in placement.nodes]}")
    worker_devices = {node.devices for node in placement.nodes[1:]}
    if len(worker_devices) > 1:
        raise ValueError(
            f"replica {placement.replica}: worker nodes must hold equal device counts, got {worker_devices}"
        )


# ------------------------------------------------------------------------------------ pod scaffolding


def _http_probe(path: str, port: str, *, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _startup_failure_threshold(model: ModelSpec) -> int:
    minutes = LARGE_MODEL_STARTUP_MINUTES if model.params_b >= LARGE_MODEL_PARAMS_B else STARTUP_MINUTES
    return minutes * 60 // PROBE_PERIOD_SECONDS


def _resources(replica: _Replica, devices: int) -> dict[str, Any]:
    """Devices exactly as planned (request = limit), CPU/memory from the spec or per-device defaults."""
    spec_resources = replica.dsd.spec.serving.resources
    requests: dict[str, str] = {
        "cpu": str(max(MIN_DEFAULT_CPU, DEFAULT_CPU_PER_DEVICE * devices)),
        "memory": f"{max(MIN_DEFAULT_MEMORY_GIB, DEFAULT_MEMORY_GIB_PER_DEVICE * devices)}Gi",
    }
    limits: dict[str, str] = {}
    if spec_resources is not None:
        if spec_resources.requests is not None:
            requests.update(spec_resources.requests.model_dump(exclude_none=True))
        if spec_resources.limits is not None:
            limits.update(spec_resources.limits.model_dump(exclude_none=True))
    device_count = str(devices)
    resource = replica.accelerator.resource_name
    return {"requests": {**requests, resource: device_count}, "limits": {**limits, resource: device_count}}


def _tolerations(replica: _Replica) -> list[dict[str, Any]]:
    device_taint = {"key": replica.accelerator.resource_name, "operator": "Exists", "effect": "NoSchedule"}
    return [device_taint, *(toleration.wire() for toleration in replica.dsd.spec.placement.tolerations)]


def _affinity(replica: _Replica, node_names: list[str]) -> dict[str, Any]:
    """Required node affinity to the planned nodes; multi-node pods also repel each other per hostname.

    The terms match the field ``metadata.name``: the placement books nodes by name, and the
    ``kubernetes.io/hostname`` label, though usually equal, may differ from it on some clouds. A field
    selector takes one value, so each node gets its own term (terms are ORed).
    """
    terms = [{"matchFields": [{"key": NODE_NAME_FIELD, "operator": "In", "values": [node]}]} for node in node_names]
    affinity: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    }
    if replica.multi_node:
        affinity["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": replica.group_selector()}, "topologyKey": HOSTNAME_LABEL}
            ]
        }
    return affinity


@dataclass
class _PodParts:
    """Volumes, mounts, init containers and env a pod gathers before its engine container is written."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    env: list[dict[str, Any]]
    model_path: str


DOWNLOAD_SCRIPT = r"""set -euo pipefail
echo "downloading ${MODEL_URI} into ${MODEL_DIR}"
case "${MODEL_URI}" in
  hf://*)
    pip install --quiet --no-cache-dir 'huggingface_hub>=0.23'
    python3 - <<'PY'
import os
from huggingface_hub import snapshot_download
snapshot_download(repo_id=os.environ["MODEL_URI"][len("hf://"):], local_dir=os.environ["MODEL_DIR"])
PY
    ;;
  modelscope://*)
    pip install --quiet --no-cache-dir modelscope
    python3 - <<'PY'
import os
from modelscope import snapshot_download
snapshot_download(os.environ["MODEL_URI"][len("modelscope://"):], local_dir=os.environ["MODEL_DIR"])
PY
    ;;
  s3://*)
    pip install --quiet --no-cache-dir awscli
    aws s3 sync "${MODEL_URI}" "${MODEL_DIR}"
    ;;
  http://*|https://*)
    python3 - <<'PY'
import os, tarfile, urllib.request
with urllib.request.urlopen(os.environ["MODEL_URI"]) as response:
    tarfile.open(fileobj=response, mode="r|*").extractall(os.environ["MODEL_DIR"], filter="data")
PY
    ;;
  *) echo "unsupported model URI ${MODEL_URI}" >&2; exit 2 ;;
esac
chmod -R u=rwX,g=rX,o= "${MODEL_DIR}"
echo "download complete"
"""


def _spec_env(replica: _Replica) -> list[dict[str, Any]]:
    return [{"name": var.name, "value": var.value} for var in replica.dsd.spec.serving.env]


def _merge_env(defaults: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``defaults`` then ``overrides``; an override replaces a default of the same name in place."""
    by_name = {var["name"]: var for var in overrides}
    merged = [by_name.pop(var["name"], var) for var in defaults]
    return merged + [var for var in overrides if var["name"] in by_name]


def _model_parts(replica: _Replica, *, needs_local_weights: bool) -> _PodParts:
    """Where the engine finds the weights: the spec's PVC / hostPath / URI, else the Hugging Face id.

    MindIE reads only local weights, so ``needs_local_weights`` downloads the Hugging Face checkpoint
    into an emptyDir when the spec names no source; vLLM downloads it itself into ``HF_HOME``.
    """
    source = replica.dsd.spec.model_source
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    parts = _PodParts(
        volumes=[shm],
        mounts=[{"name": "dshm", "mountPath": "/dev/shm"}],
        init_containers=[],
        env=[],
        model_path=replica.model.hf_id,
    )
    if source is not None and source.pvc is not None:
        parts.volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": source.pvc.read_only},
            }
        )
        mount: dict[str, Any] = {"name": "model", "mountPath": source.mount_path, "readOnly": source.pvc.read_only}
        if source.pvc.sub_path:
            mount["subPath"] = source.pvc.sub_path
        parts.mounts.append(mount)
        parts.model_path = source.mount_path
        return parts
    if source is not None and source.host_path is not None:
        parts.volumes.append({"name": "model", "hostPath": {"path": source.host_path.path, "type": "Directory"}})
        parts.mounts.append({"name": "model", "mountPath": source.mount_path, "readOnly": True})
        parts.model_path = source.mount_path
        return parts
    uri = source.uri if source is not None else None
    if uri is None and needs_local_weights:
        uri = f"hf://{replica.model.hf_id}"
    if uri is None:
        parts.volumes.append({"name": "hf-cache", "emptyDir": {}})
        parts.mounts.append({"name": "hf-cache", "mountPath": HF_CACHE_PATH})
        parts.env.append({"name": "HF_HOME", "value": HF_CACHE_PATH})
        return parts
    mount_path = source.mount_path if source is not None else MODEL_MOUNT_PATH
    parts.volumes.append({"name": "model", "emptyDir": {}})
    parts.mounts.append({"name": "model", "mountPath": mount_path})
    parts.init_containers.append(
        {
            "name": "download-model",
            "image": replica.images.downloader,
            "command": ["/bin/bash", "-c", DOWNLOAD_SCRIPT],
            "env": _merge_env(
                [{"name": "MODEL_URI", "value": uri}, {"name": "MODEL_DIR", "value": mount_path}], _spec_env(replica)
            ),
            "volumeMounts": [{"name": "model", "mountPath": mount_path}],
        }
    )
    parts.model_path = mount_path
    return parts


def _add_ascend_host_mounts(parts: _PodParts) -> None:
    for index, path in enumerate(ASCEND_HOST_PATHS):
        name = f"ascend-host-{index}"
        parts.volumes.append({"name": name, "hostPath": {"path": path, "type": "Directory"}})
        parts.mounts.append({"name": name, "mountPath": path, "readOnly": True})


def _pod_template(
    replica: _Replica,
    role: str,
    node_names: list[str],
    container: dict[str, Any],
    parts: _PodParts,
    *,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    labels = {
        **replica.labels(),
        ROLE_LABEL: role,
        PLACEMENT_LABEL: placement_fingerprint(replica.placement),
        **(extra_labels or {}),
    }
    spec: dict[str, Any] = {
        # Service links would put e.g. VLLM_PORT=tcp://... into the environment of every pod in a namespace
        # holding a Service named "vllm"; vLLM reads VLLM_PORT and fails to start.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "affinity": _affinity(replica, node_names),
        "tolerations": _tolerations(replica),
    }
    if replica.dsd.spec.placement.node_selector:
        spec["nodeSelector"] = dict(replica.dsd.spec.placement.node_selector)
    if parts.init_containers:
        spec["initContainers"] = parts.init_containers
    spec["containers"] = [container]
    spec["volumes"] = parts.volumes
    return {
        "metadata": {"labels": labels, "annotations": {**replica.annotations(), **(annotations or {})}},
        "spec": spec,
    }


def _prometheus_annotations(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _devices_on(replica: _Replica, node_index: int) -> int:
    return replica.placement.nodes[node_index].devices


# ---------------------------------------------------------------------------------------------- vLLM


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
    if placement.pipeline_parallel > 1:
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
    if placement.backend == Backend.VLLM_ASCEND and placement.precision == Precision.W8A8:
        args += ["--quantization", "ascend"]  # vllm-ascend's W8A8 (ModelSlim) checkpoints
    if accelerator.architecture == "ascend-310p":
        args += ["--dtype", "float16"]  # the 310P computes in FP16, not BF16
    return args + list(dsd.spec.serving.extra_args)


def _vllm_parts(replica: _Replica) -> _PodParts:
    parts = _model_parts(replica, needs_local_weights=False)
    if replica.ascend:
        _add_ascend_host_mounts(parts)
    return parts


def _engine_container(
    replica: _Replica,
    *,
    parts: _PodParts,
    devices: int,
    command: list[str],
    args: list[str] | None,
    env: list[dict[str, Any]],
    ports: list[dict[str, Any]],
    probes: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": ENGINE_CONTAINER, "image": replica.image(), "command": command}
    if args is not None:
        container["args"] = args
    container["env"] = _merge_env(
        [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, *parts.env, *env],
        _spec_env(replica),
    )
    container["ports"] = ports
    container["resources"] = _resources(replica, devices)
    container["volumeMounts"] = parts.mounts
    container.update(probes)
    return container


def _vllm_ports(role: str, *, multi_node: bool) -> list[dict[str, Any]]:
    ray = [{"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"}] if multi_node else []
    if role == WORKER:
        return ray
    # vLLM serves /metrics on its API port. A second entry naming 8000 "metrics" would be legal for the API
    # server but breaks server-side apply: (containerPort, protocol) is the list's merge key (kubernetes#113482).
    return [{"name": OPENAI_PORT_NAME, "containerPort": VLLM_PORT, "protocol": "TCP"}, *ray]


def _vllm_probes(replica: _Replica) -> dict[str, dict[str, Any]]:
    return {
        "startupProbe": _http_probe(
            "/health", OPENAI_PORT_NAME, period=PROBE_PERIOD_SECONDS, failures=_startup_failure_threshold(replica.model)
        ),
        "readinessProbe": _http_probe("/health", OPENAI_PORT_NAME, period=10, failures=3),
        "livenessProbe": _http_probe("/health", OPENAI_PORT_NAME, period=20, failures=6, timeout=10),
    }


def _vllm_pod_template(
    replica: _Replica, role: str, node_names: list[str], *, leader_address: str = ""
) -> dict[str, Any]:
    """A vLLM pod: single-node ``vllm serve``, or the Ray head + ``vllm serve`` (leader) / a Ray worker."""
    parts = _vllm_parts(replica)
    devices = _devices_on(replica, 0 if role == LEADER else 1)
    serve_args = vllm_serve_args(replica.dsd, replica.placement, replica.model, replica.accelerator, parts.model_path)
    annotations: dict[str, str] = {}
    probes: dict[str, dict[str, Any]] = {}
    if not replica.multi_node:
        command, args = ["vllm", "serve"], serve_args
    elif role == LEADER:
        command, args = ["/bin/bash", "-c", _ray_leader_script(replica.placement.pipeline_parallel, serve_args)], None
    else:
        command, args = ["/bin/bash", "-c", _ray_worker_script(leader_address)], None
    if role == LEADER:
        annotations = _prometheus_annotations(VLLM_PORT)
        probes = _vllm_probes(replica)
    container = _engine_container(
        replica,
        parts=parts,
        devices=devices,
        command=command,
        args=args,
        env=[],
        ports=_vllm_ports(role, multi_node=replica.multi_node),
        probes=probes,
    )
    return _pod_template(replica, role, node_names, container, parts, annotations=annotations)


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


def _deployment(replica: _Replica, template: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": replica.metadata(name or replica.name),
        "spec": {
            "replicas": 1,
            # Recreate: the old pod must free its devices before the new one can be scheduled on them.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": replica.group_selector()},
            "template": template,
        },
    }


def _leader_worker_set(replica: _Replica) -> dict[str, Any]:
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
                "size": replica.placement.pipeline_parallel,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def _headless_service(replica: _Replica, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """Stable DNS names for the group's pods, published before they are Ready (the leader waits for workers)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": replica.metadata(headless_service_name(replica.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": replica.group_selector(),
            "ports": ports,
        },
    }


def _statefulset(replica: _Replica, name: str, role: str, pods: int, template: dict[str, Any]) -> dict[str, Any]:
    selector = {**replica.group_selector(), ROLE_LABEL: role}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": replica.metadata(name),
        "spec": {
            "replicas": pods,
            "serviceName": headless_service_name(replica.name),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }


def headless_service_name(replica_name: str) -> str:
    """The headless Service of a multi-node replica: ``<name>-hl``, distinct from any DSD's own Service name
    ``<dsd>`` unless a DSD is literally named like another DSD's replica plus ``-hl``."""
    return f"{replica_name}-hl"


def leader_address(replica_name: str, namespace: str) -> str:
    """DNS name of a StatefulSet-backed replica's leader pod: ``<name>-0.<name>-hl.<namespace>.svc``."""
    return f"{replica_name}-0.{headless_service_name(replica_name)}.{namespace}.svc"


def _vllm_statefulsets(replica: _Replica) -> list[dict[str, Any]]:
    """Without LWS: a headless Service, a 1-pod leader StatefulSet and a worker StatefulSet of PP-1 pods.

    Two StatefulSets instead of one with identical pods: the leader is pinned to ``nodes[0]`` exactly and
    labelled ``dspool.io/role=leader``, so the DSD Service (equality selectors only) reaches it alone.
    """
    nodes = [node.name for node in replica.placement.nodes]
    address = leader_address(replica.name, replica.dsd.namespace)
    leader = _vllm_pod_template(replica, LEADER, nodes[:1])
    worker = _vllm_pod_template(replica, WORKER, nodes[1:], leader_address=address)
    pp = replica.placement.pipeline_parallel
    return [
        _headless_service(replica, [{"name": "ray", "port": RAY_PORT, "targetPort": RAY_PORT, "protocol": "TCP"}]),
        _statefulset(replica, replica.name, LEADER, 1, leader),
        _statefulset(replica, replica.worker_name, WORKER, pp - 1, worker),
    ]


# -------------------------------------------------------------------------------------------- MindIE


def mindie_config_map_name(replica_name: str) -> str:
    """The ConfigMap holding a MindIE replica's ``config.json`` and start script."""
    return f"{replica_name}-mindie"


def rank_table_config_map_name(replica_name: str) -> str:
    """The ConfigMap a multi-node MindIE replica reads its rank table (``hccl.json``) from.

    ``rings-config-<name>`` is the name MindCluster's ascend-operator writes for a job; on clusters without
    it dspool writes the table itself (:func:`dspool.mindie.rank_table_from_pods`).
    """
    return f"rings-config-{replica_name}"


def _rank_table_config_map(replica: _Replica, pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    table = rank_table_from_pods(pods, replica.placement.pipeline_parallel) or RANK_TABLE_PENDING
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": replica.metadata(rank_table_config_map_name(replica.name)),
        "data": {RANK_TABLE_KEY: json.dumps(table, indent=2) + "\n"},
    }


def _mindie_objects(replica: _Replica) -> list[dict[str, Any]]:
    parts = _model_parts(replica, needs_local_weights=True)
    _add_ascend_host_mounts(parts)
    config = build_mindie_config(
        model_name=replica.model.id,
        weight_path=parts.model_path,
        tensor_parallel=replica.placement.tensor_parallel,
        max_model_len=replica.placement.max_model_len,
        multi_node=replica.multi_node,
    )
    config_map_name = mindie_config_map_name(replica.name)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": replica.metadata(config_map_name),
        "data": {
            CONFIG_TEMPLATE_KEY: json.dumps(config, indent=2, sort_keys=False) + "\n",
            START_SCRIPT_KEY: mindie_start_script(multi_node=replica.multi_node),
        },
    }
    parts.volumes.append({"name": "mindie-config", "configMap": {"name": config_map_name, "defaultMode": 0o440}})
    parts.mounts.append({"name": "mindie-config", "mountPath": CONFIG_TEMPLATE_DIR, "readOnly": True})
    env: list[dict[str, Any]] = [
        {"name": "MIES_CONTAINER_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MIES_SERVICE_MONITOR_MODE", "value": "1"},
        {"name": "NPU_MEMORY_FRACTION", "value": f"{replica.dsd.spec.serving.gpu_memory_utilization:g}"},
    ]
    extra_labels: dict[str, str] = {}
    if replica.multi_node:
        parts.volumes.append(
            {
                "name": "rank-table",
                "configMap": {"name": rank_table_config_map_name(replica.name), "optional": True, "defaultMode": 0o640},
            }
        )
        parts.mounts.append({"name": "rank-table", "mountPath": RANK_TABLE_DIR, "readOnly": True})
        env.append({"name": "RANKTABLEFILE", "value": RANK_TABLE_PATH})
        extra_labels[RING_CONTROLLER_LABEL] = RING_CONTROLLER_VALUE
    ports = [
        {"name": OPENAI_PORT_NAME, "containerPort": MINDIE_API_PORT, "protocol": "TCP"},
        {"name": "management", "containerPort": MINDIE_MANAGEMENT_PORT, "protocol": "TCP"},
        {"name": METRICS_PORT_NAME, "containerPort": MINDIE_METRICS_PORT, "protocol": "TCP"},
        {"name": "multinode", "containerPort": MINDIE_MULTI_NODE_PORT, "protocol": "TCP"},
    ]
    probes = {
        "startupProbe": _http_probe(
            "/v2/health/live",
            "management",
            period=PROBE_PERIOD_SECONDS,
            failures=_startup_failure_threshold(replica.model),
        ),
        "readinessProbe": _http_probe("/v2/health/ready", "management", period=10, failures=3),
        "livenessProbe": _http_probe("/v2/health/live", "management", period=20, failures=6, timeout=10),
    }
    command = ["/bin/bash", f"{CONFIG_TEMPLATE_DIR}/{START_SCRIPT_KEY}"]
    nodes = [node.name for node in replica.placement.nodes]

    def template(role: str, node_names: list[str], devices: int) -> dict[str, Any]:
        container = _engine_container(
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
        annotations = _prometheus_annotations(MINDIE_METRICS_PORT) if role == LEADER else {}
        pod = _pod_template(
            replica, role, node_names, container, parts, extra_labels=extra_labels, annotations=annotations
        )
        return copy.deepcopy(pod)  # leader and worker templates must not share mutable lists

    if not replica.multi_node:
        return [config_map, _deployment(replica, template(LEADER, nodes, _devices_on(replica, 0)))]
    headless_ports = [
        {"name": "multinode", "port": MINDIE_MULTI_NODE_PORT, "targetPort": MINDIE_MULTI_NODE_PORT, "protocol": "TCP"}
    ]
    return [
        config_map,
        _headless_service(replica, headless_ports),
        _statefulset(replica, replica.name, LEADER, 1, template(LEADER, nodes[:1], _devices_on(replica, 0))),
        _statefulset(
            replica,
            replica.worker_name,
            WORKER,
            replica.placement.pipeline_parallel - 1,
            template(WORKER, nodes[1:], _devices_on(replica, 1)),
        ),
    ]
