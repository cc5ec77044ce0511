"""Kubernetes objects that serve one DeepSeekDeployment: pure builders from a placement to plain dicts.

Nothing here talks to the API server. The controller hands in the DSD, one :class:`ReplicaPlacement`
(which nodes, how many devices, the TP x PP layout) and the catalog entries; it gets back manifests to
apply. Every object carries an owner reference to the DSD (deleted with it), the dspool labels and the
placement's spec hash. See ``docs/workloads.md`` for what each backend gets and why.

One module per serving engine, on shared parts:

- :mod:`~dspool.workloads.common`: names, image defaults, the DSD Service, pod scaffolding, labels;
- :mod:`~dspool.workloads.vllm`: vLLM on one node (a Deployment running ``vllm serve``) or on several
  (pipeline parallel: a LeaderWorkerSet running a Ray cluster when LWS is installed, else a leader
  StatefulSet, a worker StatefulSet and a headless Service);
- :mod:`~dspool.workloads.vllm_ascend`: what vllm-ascend adds to vLLM's objects on Ascend NPUs;
- :mod:`~dspool.workloads.mindie`: MindIE's ``config.json``, start script and HCCL rank table, and its
  ConfigMap + Deployment, or on several nodes the two StatefulSets and the headless Service;
- ``scripts/``: the shell scripts pods run, as real files (``download.sh``: the weights' init container).

One ClusterIP Service per DSD (:func:`build_service`) selects the leader pods of every replica on the
container port *named* ``openai``, so replicas on different backends share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspool.api import DeepSeekDeployment, ReplicaPlacement
from dspool.catalog import AcceleratorSpec, ModelSpec
from dspool.sizing import Backend
from dspool.workloads.common import (
    DEFAULT_IMAGES,
    DOWNLOAD_SCRIPT,
    IMAGE_ENV_PREFIX,
    LEADER,
    MAX_OBJECT_NAME,
    METRICS_SERVICE_PORT,
    MODEL_MOUNT_PATH,
    NO_INTERCONNECT,
    SERVICE_PORT,
    SPEC_HASH_ANNOTATION,
    WORKER,
    ImageDefaults,
    Interconnect,
    Replica,
    build_service,
    check_placement,
    endpoint_url,
    headless_service_name,
    images_from_env,
    leader_address,
    owner_reference,
    replica_object_name,
    service_name,
    service_selector,
)
from dspool.workloads.mindie import (
    MINDIE_API_PORT,
    MINDIE_METRICS_PORT,
    mindie_config_map_name,
    mindie_objects,
    rank_table_config_map_name,
)
from dspool.workloads.vllm import LWS_API_VERSION, RAY_PORT, VLLM_PORT, vllm_objects, vllm_serve_args

__all__ = [
    "DEFAULT_IMAGES",
    "DOWNLOAD_SCRIPT",
    "IMAGE_ENV_PREFIX",
    "LEADER",
    "LWS_API_VERSION",
    "MAX_OBJECT_NAME",
    "METRICS_SERVICE_PORT",
    "MODEL_MOUNT_PATH",
    "NO_INTERCONNECT",
    "RAY_PORT",
    "SERVICE_PORT",
    "SPEC_HASH_ANNOTATION",
    "VLLM_PORT",
    "WORKER",
    "ImageDefaults",
    "Interconnect",
    "build_replica_objects",
    "build_service",
    "endpoint_url",
    "headless_service_name",
    "images_from_env",
    "leader_address",
    "metrics_port",
    "mindie_config_map_name",
    "owner_reference",
    "rank_table_config_map_name",
    "replica_object_name",
    "service_name",
    "service_selector",
    "serving_port",
    "vllm_serve_args",
]


def serving_port(backend: Backend | str) -> int:
    """The engine's OpenAI-compatible API port in the container: 8000 for vLLM/vllm-ascend, 1025 for MindIE."""
    return MINDIE_API_PORT if Backend(backend) == Backend.MINDIE else VLLM_PORT


def metrics_port(backend: Backend | str) -> int:
    """The container port serving Prometheus metrics: vLLM's API port, MindIE's metricsPort 1027."""
    return MINDIE_METRICS_PORT if Backend(backend) == Backend.MINDIE else VLLM_PORT


def build_replica_objects(
    dsd: DeepSeekDeployment,
    placement: ReplicaPlacement,
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    *,
    lws_available: bool,
    images: ImageDefaults = DEFAULT_IMAGES,
    rank_table_pods: Sequence[Mapping[str, Any]] | None = None,
    interconnect: Interconnect = NO_INTERCONNECT,
    model_cache_dir: str | None = None,
) -> list[dict[str, Any]]:
    """The objects that run one replica on its planned nodes, in apply order (ConfigMaps and Services first).

    ``rank_table_pods``: the replica's current pods, which the reconcile pass hands in unless MindCluster is
    installed. For a multi-node MindIE replica dspool then writes its HCCL rank table into the ConfigMap
    ``rings-config-<name>``, built from the Ascend device plugin's annotations on those pods (``status:
    completed`` once every pod carries its NPUs' addresses, ``initializing`` before); other replicas ignore
    them. None writes no rank table: MindCluster's ascend-operator does. ``interconnect``: the site's RDMA
    resource and NCCL variables, for multi-node NVIDIA replicas. ``model_cache_dir``: the node model cache, where
    the engine reads weights fetched by dspool's fetch Jobs (None: the engine pod fetches them itself).

    Raises ValueError for a placement that cannot be served as given: a backend on the wrong vendor,
    a node count that is not the pipeline-parallel size, or a multi-node replica on Ascend 310P.
    """
    replica = Replica(dsd, placement, model, accelerator, images, interconnect, model_cache_dir)
    check_placement(replica)
    if replica.backend == Backend.MINDIE:
        return mindie_objects(replica, rank_table_pods)
    return vllm_objects(replica, lws_available=lws_available)
