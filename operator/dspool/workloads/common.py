"""What every serving engine's objects share: names, image defaults, the DSD Service, pod scaffolding, labels.

The engine modules (:mod:`dspool.workloads.vllm`, :mod:`dspool.workloads.vllm_ascend`,
:mod:`dspool.workloads.mindie`) build their pods from these parts; :mod:`dspool.workloads` chooses the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.resources import files
from typing import Any

from dspool import __version__
from dspool.api import (
    API_VERSION,
    DEFAULT_MODEL_MOUNT_PATH,
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
from dspool.engine_support import (
    DEFAULT_MINDIE_310P_IMAGE,
    DEFAULT_MINDIE_IMAGE,
    DEFAULT_VLLM_ASCEND_310P_IMAGE,
    DEFAULT_VLLM_ASCEND_IMAGE,
    DEFAULT_VLLM_IMAGE,
)
from dspool.sizing import Backend, weights_total_gib
from dspool.weights.entries import GIB, entry_for
from dspool.weights.estimate import Bandwidth, load_seconds
from dspool.weights.jobs import entry_marker_path

MODEL_NAME_LABEL = "app.kubernetes.io/name"
SPEC_HASH_ANNOTATION = "dspool.io/spec-hash"
HOSTNAME_LABEL = "kubernetes.io/hostname"
NODE_NAME_FIELD = "metadata.name"
LEADER = "leader"
WORKER = "worker"

SERVICE_PORT = 8000  # clients use :8000 whatever the backend; targetPort is the port named "openai"
METRICS_SERVICE_PORT = 9090
OPENAI_PORT_NAME = "openai"
METRICS_PORT_NAME = "metrics"
ENGINE_CONTAINER = "engine"

MAX_OBJECT_NAME = 47
"""Longest replica object name: leaves room for ``-w`` (worker StatefulSet), a pod ordinal and the
StatefulSet's ``controller-revision-hash`` label value (name + ``-`` + 10 characters <= 63)."""

MODEL_MOUNT_PATH = DEFAULT_MODEL_MOUNT_PATH  # where downloaded weights go when the spec names no source
HF_CACHE_PATH = "/root/.cache/huggingface"
ASCEND_HOST_PATHS = ("/usr/local/Ascend/driver", "/usr/local/dcmi")
ASCEND_310P_ARCHITECTURE = "ascend-310p"

LARGE_MODEL_PARAMS_B = 100  # above this, loading takes tens of minutes
LARGE_MODEL_STARTUP_MINUTES = 60
STARTUP_MINUTES = 20
PROBE_PERIOD_SECONDS = 10
LOAD_SAFETY = 3  # a shared disk, page-cache misses and the engine's weight processing
ENGINE_WARMUP_SECONDS = 900  # after the weights: compilation, CUDA graphs or ATB graph capture, the KV cache

# Default CPU/memory requests per device the pod holds; no limits (see docs/workloads.md).
DEFAULT_CPU_PER_DEVICE = 4
DEFAULT_MEMORY_GIB_PER_DEVICE = 32
MIN_DEFAULT_CPU = 4
MIN_DEFAULT_MEMORY_GIB = 32

DOWNLOAD_SCRIPT = files("dspool.workloads").joinpath("scripts", "download.sh").read_text(encoding="utf-8")
"""The init container's script that fetches the weights into the model volume (``MODEL_URI`` -> ``MODEL_DIR``);
a real file so shellcheck reads it (``make lint``)."""


@dataclass(frozen=True)
class ImageDefaults:
    """Default engine images, by repository and tag only: the cluster's registry or mirror supplies the host."""

    # The tags are kept in dspool.engine_support, which also says which checkpoints each release serves.
    vllm: str = DEFAULT_VLLM_IMAGE
    vllm_ascend: str = DEFAULT_VLLM_ASCEND_IMAGE
    vllm_ascend_310p: str = DEFAULT_VLLM_ASCEND_310P_IMAGE
    mindie: str = DEFAULT_MINDIE_IMAGE
    mindie_310p: str = DEFAULT_MINDIE_310P_IMAGE
    downloader: str = "python:3.12-slim"
    # The model-cache fetch Jobs run dspool's own image: its fetcher needs nothing but Python's standard library.
    fetcher: str = f"dspool/operator:{__version__}"
    # Secrets every engine and fetch pod pulls its images with (a private registry or mirror).
    pull_secrets: tuple[str, ...] = ()

    def by_backend(self) -> dict[Backend, str]:
        """The image each engine runs by default (the 910-class image for Ascend: 310P images are picked per node)."""
        return {Backend.VLLM: self.vllm, Backend.VLLM_ASCEND: self.vllm_ascend, Backend.MINDIE: self.mindie}


DEFAULT_IMAGES = ImageDefaults()


@dataclass(frozen=True)
class Interconnect:
    """How multi-node NVIDIA replicas reach the RDMA fabric: the extended resource the site's RDMA device
    plugin advertises (e.g. ``rdma/rdma_shared_device_a`` of the NVIDIA Network Operator's shared device
    plugin) and the NCCL variables the site sets (``NCCL_IB_HCA``, ``NCCL_SOCKET_IFNAME``...). Without a
    resource, NCCL falls back to TCP on the pod network. Ascend replicas need none: HCCL runs over the NPUs'
    own RoCE ports (``device_ip`` in the rank table)."""

    rdma_resource: str | None = None
    rdma_count: int = 1
    env: tuple[tuple[str, str], ...] = ()

    def applies_to(self, replica: Replica) -> bool:
        """Whether ``replica``'s pods request the RDMA resource: multi-node NVIDIA replicas, when one is named."""
        return self.rdma_resource is not None and replica.multi_node and not replica.ascend


NO_INTERCONNECT = Interconnect()
IMAGE_ENV_PREFIX = "DSPOOL_IMAGE_"
PULL_SECRETS_ENV = "DSPOOL_IMAGE_PULL_SECRETS"  # comma-separated Secret names


def images_from_env(env: Mapping[str, str], base: ImageDefaults = DEFAULT_IMAGES) -> ImageDefaults:
    """``base`` with each image overridden by ``DSPOOL_IMAGE_<FIELD>`` (e.g. ``DSPOOL_IMAGE_VLLM_ASCEND``) when set,
    and the pull secrets by ``DSPOOL_IMAGE_PULL_SECRETS`` (comma-separated names)."""
    overrides: dict[str, Any] = {
        field.name: env[key]
        for field in fields(ImageDefaults)
        if (key := IMAGE_ENV_PREFIX + field.name.upper()) in env and env[key].strip()
    }
    if "pull_secrets" in overrides:
        overrides["pull_secrets"] = tuple(name.strip() for name in env[PULL_SECRETS_ENV].split(",") if name.strip())
    return ImageDefaults(**{**{f.name: getattr(base, f.name) for f in fields(ImageDefaults)}, **overrides})


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
                # A Hugging Face repo id ("org/name") is no label value: the slash becomes a dot.
                MODEL_NAME_LABEL: dns_label(dsd.spec.model.replace("/", "."), MAX_LABEL_VALUE)
                if "/" in dsd.spec.model
                else dsd.spec.model,
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


@dataclass(frozen=True)
class Replica:
    """Everything one replica's builders need, with the derived names and labels."""

    dsd: DeepSeekDeployment
    placement: ReplicaPlacement
    model: ModelSpec
    accelerator: AcceleratorSpec
    images: ImageDefaults
    interconnect: Interconnect = field(default_factory=Interconnect)
    model_cache_dir: str | None = None  # the node model cache's directory; None: no cache (downloads in the pod)

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
        return len(self.placement.nodes) > 1

    @property
    def servers(self) -> int:
        """Nodes (pods) of the replica: one per pipeline stage, or per server of a TP/DP group."""
        return len(self.placement.nodes)

    @property
    def is_310p(self) -> bool:
        return self.accelerator.architecture == ASCEND_310P_ARCHITECTURE

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


def check_placement(replica: Replica) -> None:
    placement = replica.placement
    vendor = replica.accelerator.vendor
    if replica.backend == Backend.VLLM and vendor != Vendor.NVIDIA:
        raise ValueError(f"backend vllm needs NVIDIA GPUs, {replica.accelerator.id} is {vendor.value}")
    if replica.backend in (Backend.MINDIE, Backend.VLLM_ASCEND) and vendor != Vendor.ASCEND:
        raise ValueError(
            f"backend {replica.backend.value} needs Ascend NPUs, {replica.accelerator.id} is {vendor.value}"
        )
    layout_devices = placement.tensor_parallel * placement.pipeline_parallel * placement.data_parallel
    if placement.devices != layout_devices:
        raise ValueError(
            f"replica {placement.replica}: {placement.devices} devices on its nodes for a layout of "
            f"{layout_devices} (TP{placement.tensor_parallel} x PP{placement.pipeline_parallel} x "
            f"DP{placement.data_parallel})"
        )
    if placement.pipeline_parallel > 1 and len(placement.nodes) != placement.pipeline_parallel:
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


def http_probe(path: str, port: str, *, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def startup_failure_threshold(model: ModelSpec, precision: Precision | None = None) -> int:
    """Startup-probe failures allowed: the engine's start after its weights are on the node (an init container
    waits for the download or the cache entry, so the probe never counts the fetch). At least 20 minutes (60
    for models over 100B); more when loading the checkpoint from local disk at the default disk bandwidth
    (``dspool.weights.estimate``), times LOAD_SAFETY, plus ENGINE_WARMUP_SECONDS, would take longer."""
    minutes = LARGE_MODEL_STARTUP_MINUTES if model.params_b >= LARGE_MODEL_PARAMS_B else STARTUP_MINUTES
    seconds = float(minutes * 60)
    if precision is not None:
        size = int(weights_total_gib(model, precision) * GIB)
        seconds = max(seconds, LOAD_SAFETY * load_seconds(size, Bandwidth()) + ENGINE_WARMUP_SECONDS)
    return math.ceil(seconds / PROBE_PERIOD_SECONDS)


def _resources(replica: Replica, devices: int, interconnect: Interconnect = NO_INTERCONNECT) -> dict[str, Any]:
    """Devices exactly as planned (request = limit), CPU/memory from the spec or per-device defaults, and the
    site's RDMA resource for a multi-node NVIDIA replica."""
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
    extended = {replica.accelerator.resource_name: str(devices)}
    if interconnect.applies_to(replica) and interconnect.rdma_resource is not None:
        extended[interconnect.rdma_resource] = str(interconnect.rdma_count)
    return {"requests": {**requests, **extended}, "limits": {**limits, **extended}}


def _tolerations(replica: Replica) -> list[dict[str, Any]]:
    device_taint = {"key": replica.accelerator.resource_name, "operator": "Exists", "effect": "NoSchedule"}
    return [device_taint, *(toleration.wire() for toleration in replica.dsd.spec.placement.tolerations)]


def _affinity(replica: Replica, node_names: list[str]) -> dict[str, Any]:
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
class PodParts:
    """Volumes, mounts, init containers and env a pod gathers before its engine container is written."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    env: list[dict[str, Any]]
    model_path: str


def _spec_env(replica: Replica) -> list[dict[str, Any]]:
    return [var.container_entry() for var in replica.dsd.spec.serving.env]


def spec_env_from(replica: Replica) -> list[dict[str, Any]]:
    """``serving.envFrom`` as core/v1 EnvFromSource entries (Secrets and ConfigMaps passed through)."""
    return [source.wire() for source in replica.dsd.spec.serving.env_from]


def _merge_env(defaults: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``defaults`` then ``overrides``; an override replaces a default of the same name in place."""
    by_name = {var["name"]: var for var in overrides}
    merged = [by_name.pop(var["name"], var) for var in defaults]
    return merged + [var for var in overrides if var["name"] in by_name]


def model_parts(replica: Replica, *, needs_local_weights: bool) -> PodParts:
    """Where the engine finds the weights: the spec's PVC / hostPath / URI, else the Hugging Face id.

    MindIE reads only local weights, so ``needs_local_weights`` downloads the Hugging Face checkpoint
    into an emptyDir when the spec names no source; vLLM downloads it itself into ``HF_HOME``.
    """
    source = replica.dsd.spec.model_source
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    parts = PodParts(
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
    if replica.model_cache_dir is not None:
        entry = entry_for(replica.dsd.spec, replica.model, Precision(replica.placement.precision))
        if entry is not None:
            _mount_cache_entry(parts, replica, replica.model_cache_dir, entry.id)
            return parts
    _mount_download(parts, replica, needs_local_weights)
    return parts


def _mount_download(parts: PodParts, replica: Replica, needs_local_weights: bool) -> None:
    """Without a node model cache: the engine pod downloads the weights itself (an init container into an
    emptyDir), or vLLM fetches them from the hub into ``HF_HOME``."""
    source = replica.dsd.spec.model_source
    uri = source.uri if source is not None else None
    if uri is None and needs_local_weights:
        uri = f"hf://{replica.model.hf_id}"
    if uri is None:
        parts.volumes.append({"name": "hf-cache", "emptyDir": {}})
        parts.mounts.append({"name": "hf-cache", "mountPath": HF_CACHE_PATH})
        parts.env.append({"name": "HF_HOME", "value": HF_CACHE_PATH})
        return
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
            **({"envFrom": spec_env_from(replica)} if replica.dsd.spec.serving.env_from else {}),
            "volumeMounts": [{"name": "model", "mountPath": mount_path}],
        }
    )
    parts.model_path = mount_path


WAIT_FOR_WEIGHTS_SECONDS = 10  # how often the init container looks for the entry's marker


def _mount_cache_entry(parts: PodParts, replica: Replica, cache_dir: str, entry: str) -> None:
    """The node model cache, read-only, and an init container that waits until the entry is complete.

    Nothing is downloaded in the engine pod: a fetch Job on the node fills the cache (``dspool.weights``), and
    the engine starts only once the entry's marker is there, so a container restart or a group recreation
    finds the weights on local disk. The wait runs in the engine's own image (no other image to pull)."""
    marker = entry_marker_path(cache_dir, entry)
    parts.volumes.append({"name": "model-cache", "hostPath": {"path": cache_dir, "type": "DirectoryOrCreate"}})
    parts.mounts.append({"name": "model-cache", "mountPath": cache_dir, "readOnly": True})
    script = (
        f'until [ -f "{marker}" ]; do echo "waiting for the weights of {entry} on this node"; '
        f"sleep {WAIT_FOR_WEIGHTS_SECONDS}; done"
    )
    parts.init_containers.append(
        {
            "name": "wait-for-weights",
            "image": replica.image(),
            "command": ["/bin/sh", "-c", script],
            "volumeMounts": [{"name": "model-cache", "mountPath": cache_dir, "readOnly": True}],
        }
    )
    parts.model_path = f"{cache_dir.rstrip('/')}/{entry}"


def add_ascend_host_mounts(parts: PodParts) -> None:
    for index, path in enumerate(ASCEND_HOST_PATHS):
        name = f"ascend-host-{index}"
        parts.volumes.append({"name": name, "hostPath": {"path": path, "type": "Directory"}})
        parts.mounts.append({"name": name, "mountPath": path, "readOnly": True})


def pod_template(
    replica: Replica,
    role: str,
    node_names: list[str],
    container: dict[str, Any],
    parts: PodParts,
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
    if replica.images.pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in replica.images.pull_secrets]
    return {
        "metadata": {"labels": labels, "annotations": {**replica.annotations(), **(annotations or {})}},
        "spec": spec,
    }


def prometheus_annotations(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def devices_on(replica: Replica, node_index: int) -> int:
    return replica.placement.nodes[node_index].devices


def engine_container(
    replica: Replica,
    *,
    parts: PodParts,
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
    fabric_env = [{"name": n, "value": v} for n, v in replica.interconnect.env] if replica.multi_node else []
    container["env"] = _merge_env(
        [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, *parts.env, *env, *fabric_env],
        _spec_env(replica),
    )
    if replica.dsd.spec.serving.env_from:
        container["envFrom"] = spec_env_from(replica)
    container["ports"] = ports
    container["resources"] = _resources(replica, devices, replica.interconnect)
    container["volumeMounts"] = parts.mounts
    container.update(probes)
    return container


def deployment(replica: Replica, template: dict[str, Any], name: str | None = None) -> dict[str, Any]:
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


def headless_service(replica: Replica, ports: list[dict[str, Any]]) -> dict[str, Any]:
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


def statefulset(replica: Replica, name: str, role: str, pods: int, template: dict[str, Any]) -> dict[str, Any]:
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
