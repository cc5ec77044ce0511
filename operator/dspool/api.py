"""The DeepSeekDeployment API (dspool.io/v1alpha1): pydantic models, the single source of the CRD.

``python -m dspool.crdgen crds`` turns these models into ``crds/deepseekdeployments.yaml``; CEL rules
(``x-kubernetes-validations``) make the API server reject malformed specs at ``kubectl apply``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dspool.catalog import Precision
from dspool.sizing import DEFAULT_GPU_MEMORY_UTILIZATION, Backend

GROUP = "dspool.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DeepSeekDeployment"
PLURAL = "deepseekdeployments"
SINGULAR = "deepseekdeployment"
SHORT_NAMES = ["dsd"]

DEPLOYMENT_LABEL = "dspool.io/deployment"
REPLICA_LABEL = "dspool.io/replica"
ROLE_LABEL = "dspool.io/role"
PLACEMENT_LABEL = "dspool.io/placement"  # on pods: which placement (spec + nodes) the pod was built for
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "dspool"
DEFAULT_MODEL_MOUNT_PATH = "/models"  # where the engine sees the weights unless spec.modelSource.mountPath says

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-]*$"
# A model may also be named by its Hugging Face repo id, "org/name" (at most 96 characters on the hub).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)?$"


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel_config(*rules: tuple[str, str]) -> ConfigDict:
    """The API models' config plus CEL rules (rule, message) the API server checks at ``kubectl apply``."""
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]},
    )


def exactly_one(model: BaseModel, first: str, second: str, message: str) -> None:
    """Raise ``message`` unless exactly one of the two fields is set (the Python twin of a CEL rule)."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(message)


class Strategy(StrEnum):
    """How replicas are laid over the pool."""

    BINPACK = "binpack"
    SPREAD = "spread"


class Phase(StrEnum):
    """Life-cycle phase of a DeepSeekDeployment."""

    PENDING = "Pending"
    UNSCHEDULABLE = "Unschedulable"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class RebalanceConsent(StrEnum):
    """Whether the rebalancer may move a DeepSeekDeployment's replicas to make room for another one."""

    ALLOWED = "Allowed"
    NEVER = "Never"


class MoveState(StrEnum):
    """Where one make-before-break move is; dspool.rebalance.next_move_step computes the next state."""

    PLANNED = "Planned"
    DESTINATION_RESERVED = "DestinationReserved"
    NEW_REPLICA_STARTING = "NewReplicaStarting"
    NEW_REPLICA_READY = "NewReplicaReady"
    OLD_REMOVED = "OldRemoved"
    DONE = "Done"
    ROLLED_BACK = "RolledBack"


class ResourceList(ApiModel):
    """CPU/memory requests or limits for the serving container (quantities as strings)."""

    model_config = ConfigDict(alias_generator=None, populate_by_name=True, extra="forbid")

    cpu: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[eE][0-9]+)?$")


_QUANTITY_SUFFIXES = {"m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                      "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}  # fmt: skip


def quantity_value(text: str) -> float:
    """A Kubernetes quantity as a number (the forms ResourceList's patterns admit)."""
    number = re.match(r"^[0-9]+(\.[0-9]+)?([eE][0-9]+)?", text)
    if number is None:
        raise ValueError(f"{text!r} is not a quantity")
    return float(number.group(0)) * _QUANTITY_SUFFIXES.get(text[number.end() :], 1.0)


def _requests_within_limits(kind: str) -> str:
    return (
        f"!has(self.requests) || !has(self.limits) || !has(self.requests.{kind}) || !has(self.limits.{kind}) "
        f"|| quantity(self.requests.{kind}).compareTo(quantity(self.limits.{kind})) <= 0"
    )


class Resources(ApiModel):
    """CPU and memory for the serving container; accelerators are set by the planner."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": _requests_within_limits(kind), "message": f"serving.resources: requests.{kind} must not "
                 f"exceed limits.{kind} (the API server refuses such a pod)"}
                for kind in ("cpu", "memory")
            ]
        },
    )  # fmt: skip

    requests: ResourceList | None = None
    limits: ResourceList | None = None

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for kind in ("cpu", "memory"):
            asked = getattr(self.requests, kind, None) if self.requests else None
            cap = getattr(self.limits, kind, None) if self.limits else None
            if asked is not None and cap is not None and quantity_value(asked) > quantity_value(cap):
                raise ValueError(f"requests.{kind} {asked} exceeds limits.{kind} {cap}")
        return self


ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class KeySelector(ApiModel):
    """One key of a Secret or ConfigMap in the DSD's namespace (core/v1 SecretKeySelector / ConfigMapKeySelector)."""

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool | None = None


_ONE_KEY_REF = "valueFrom needs exactly one of secretKeyRef, configMapKeyRef"
_ONE_OBJECT_REF = "envFrom entries need exactly one of secretRef, configMapRef"


class EnvVarSource(ApiModel):
    """Where a variable's value comes from: a Secret key or a ConfigMap key (exactly one)."""

    model_config = cel_config(("has(self.secretKeyRef) != has(self.configMapKeyRef)", _ONE_KEY_REF))

    secret_key_ref: KeySelector | None = None
    config_map_key_ref: KeySelector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        exactly_one(self, "secret_key_ref", "config_map_key_ref", _ONE_KEY_REF)
        return self


class EnvVar(ApiModel):
    """An extra environment variable for the serving (and weight-fetching) containers: a plain value, or
    ``valueFrom`` a Secret or ConfigMap key, so that tokens stay out of the DSD."""

    model_config = cel_config(
        ("!(has(self.value) && has(self.valueFrom))", "an env entry takes value or valueFrom, not both")
    )

    name: str = Field(min_length=1, max_length=253, pattern=ENV_NAME_PATTERN)
    value: str | None = None
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: value or valueFrom, not both")
        return self

    def container_entry(self) -> dict[str, Any]:
        """The core/v1 EnvVar a container gets."""
        if self.value_from is not None:
            return {"name": self.name, "valueFrom": self.value_from.wire()}
        return {"name": self.name, "value": self.value or ""}


class ObjectReference(ApiModel):
    """A Secret or ConfigMap in the DSD's namespace whose every key becomes a variable."""

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)
    optional: bool | None = None


class EnvFromSource(ApiModel):
    """core/v1 EnvFromSource: all keys of a Secret or a ConfigMap, optionally prefixed (exactly one source)."""

    model_config = cel_config(("has(self.secretRef) != has(self.configMapRef)", _ONE_OBJECT_REF))

    prefix: str | None = Field(default=None, max_length=253, pattern=ENV_NAME_PATTERN)
    secret_ref: ObjectReference | None = None
    config_map_ref: ObjectReference | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        exactly_one(self, "secret_ref", "config_map_ref", _ONE_OBJECT_REF)
        return self


class Parallelism(StrEnum):
    """How a replica's devices split the model."""

    TENSOR = "tensor"
    DATA_EXPERT = "data-expert"


class KvCacheDtype(StrEnum):
    """The KV cache's element type."""

    AUTO = "auto"
    FP8 = "fp8"


class SpeculativeDecoding(ApiModel):
    """Speculative decoding with the checkpoint's own multi-token-prediction (MTP) module."""

    method: Literal["mtp"] = "mtp"
    num_speculative_tokens: int = Field(default=1, ge=1, le=4, description="draft tokens per step (1 recommended)")


class ServingSpec(ApiModel):
    """How the engine runs: KV budget, memory utilization, extra arguments, image."""

    kv_cache_tokens: int | None = Field(default=None, ge=1, le=10_000_000, description="KV-cache budget in tokens")
    max_model_len: int | None = Field(default=None, ge=1, le=10_000_000, description="longest request, tokens")
    gpu_memory_utilization: float = Field(default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    extra_args: list[str] = Field(default_factory=list, max_length=64, description="appended to the engine command")
    image: str | None = Field(
        default=None, min_length=1, pattern=r"^[^\s]+$", description="overrides the backend's default image"
    )
    resources: Resources | None = None
    parallelism: Parallelism = Field(
        default=Parallelism.TENSOR,
        description="tensor: TP inside a node, PP across nodes; data-expert: data-parallel attention with "
        "expert-parallel MoE (vLLM --data-parallel-size --enable-expert-parallel): one MLA cache per rank",
    )
    kv_cache_dtype: KvCacheDtype = Field(
        default=KvCacheDtype.AUTO, description="fp8 halves the KV cache (vLLM --kv-cache-dtype fp8; Hopper+)"
    )
    speculative_decoding: SpeculativeDecoding | None = Field(
        default=None, description="MTP speculative decoding (vLLM --speculative-config); adds the MTP weights"
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, max_length=16, description="Secrets/ConfigMaps whose keys become variables"
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.all(e, self.exists_one(f, f.name == e.name))",
                 "message": "serving.env names must be unique (the API server refuses a container with a repeated "
                 "variable)"}
            ]
        },
    )  # fmt: skip

    @field_validator("env")
    @classmethod
    def _unique_env_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in env]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique; repeated: {', '.join(repeated)}")
        return env


class Toleration(ApiModel):
    """A Kubernetes toleration (same fields as core/v1)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PlacementSpec(ApiModel):
    """Where replicas may go and how they are packed."""

    strategy: Strategy = Strategy.BINPACK
    accelerator_types: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="allowed accelerator ids in preference order; empty = any the model fits on",
        json_schema_extra={"items": {"type": "string", "pattern": ID_PATTERN, "maxLength": 63}},
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    allow_multi_node: bool = True
    rebalance: RebalanceConsent = Field(
        default=RebalanceConsent.ALLOWED,
        description="Allowed: replicas may be moved (make-before-break) to make room for another model; "
        "Never: they stay where they are",
    )


class WeightsSpec(ApiModel):
    """How the node model cache serves this DSD (when the operator runs with --model-cache)."""

    warm_nodes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="keep the weights on this many more nodes than the replicas use, of the accelerator type they "
        "run on, so that a scale-out or a move lands on a warm node",
    )


class PvcSource(ApiModel):
    """Weights on a PersistentVolumeClaim."""

    claim_name: str = Field(min_length=1, max_length=253)
    sub_path: str | None = None
    read_only: bool = True


class HostPathSource(ApiModel):
    """Weights on every node's local disk."""

    path: str = Field(min_length=1, pattern=r"^/")


class ModelSource(ApiModel):
    """Where the weights are: exactly one of pvc, hostPath, uri (downloaded on start)."""

    model_config = cel_config(
        (
            "(has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
            "modelSource needs exactly one of pvc, hostPath, uri",
        )
    )

    pvc: PvcSource | None = None
    host_path: HostPathSource | None = None
    uri: str | None = Field(default=None, pattern=r"^(hf|s3|https?|modelscope)://.+", description="download on start")
    mount_path: str = Field(
        default=DEFAULT_MODEL_MOUNT_PATH, pattern=r"^/", description="where the engine sees the weights"
    )
    credentials_secret: str | None = Field(
        default=None,
        pattern=OBJECT_NAME_PATTERN,
        max_length=253,
        description="Secret (same namespace) whose keys become the fetch's environment: HF_TOKEN, "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL",
    )


_NVIDIA_ONLY = "self.placement.acceleratorTypes.all(t, !t.lowerAscii().startsWith('ascend'))"
_ASCEND_ONLY = "self.placement.acceleratorTypes.all(t, t.lowerAscii().startsWith('ascend'))"
_HAS_TYPES = "has(self.placement) && has(self.placement.acceleratorTypes) && size(self.placement.acceleratorTypes) > 0"
SPEC_RULES: list[JsonValue] = [
    {
        "rule": f"!(self.backend in ['mindie', 'vllm-ascend'] && {_HAS_TYPES} && {_NVIDIA_ONLY})",
        "message": "backend mindie/vllm-ascend runs only on Ascend; placement.acceleratorTypes allows only NVIDIA",
    },
    {
        "rule": f"!(self.backend == 'vllm' && {_HAS_TYPES} && {_ASCEND_ONLY})",
        "message": "backend vllm runs on NVIDIA (use vllm-ascend on Ascend); acceleratorTypes allows only Ascend",
    },
    {
        "rule": f"!(self.precision == 'fp8' && {_HAS_TYPES} && {_ASCEND_ONLY})",
        "message": "precision fp8 needs NVIDIA compute capability >= 8.9; Ascend NPUs have no FP8",
    },
    {
        "rule": "!(self.precision == 'fp8' && self.backend in ['mindie', 'vllm-ascend'])",
        "message": "precision fp8 cannot run on Ascend backends (mindie, vllm-ascend)",
    },
    {
        "rule": "!(self.backend in ['mindie', 'vllm-ascend'] && has(self.serving) && has(self.serving.kvCacheDtype) "
        "&& self.serving.kvCacheDtype == 'fp8')",
        "message": "serving.kvCacheDtype fp8 runs on vLLM (NVIDIA Hopper or newer) only; MindIE and vllm-ascend have "
        "no FP8 KV cache",
    },
    {
        "rule": "!(self.backend in ['mindie', 'vllm-ascend'] && has(self.serving) "
        "&& has(self.serving.speculativeDecoding))",
        "message": "serving.speculativeDecoding is planned for vLLM on NVIDIA only",
    },
    {
        "rule": "!(self.backend == 'mindie' && has(self.serving) && has(self.serving.parallelism) "
        "&& self.serving.parallelism == 'data-expert')",
        "message": "serving.parallelism data-expert is planned for vLLM and vllm-ascend, not MindIE",
    },
    {
        "rule": "!has(self.serving) || !has(self.serving.maxModelLen) || !has(self.serving.kvCacheTokens) "
        "|| self.serving.maxModelLen <= self.serving.kvCacheTokens",
        "message": "serving.maxModelLen must not exceed serving.kvCacheTokens (one request must fit the KV cache)",
    },
]


class ScalingSpec(ApiModel):
    """Bounds on the replica count, whoever sets it (kubectl scale, an HPA): dspool runs replicas
    clamped to [minReplicas, maxReplicas] and says so in the Scaling condition."""

    model_config = cel_config(
        (
            "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
            "scaling.minReplicas must not exceed scaling.maxReplicas",
        )
    )

    min_replicas: int | None = Field(default=None, ge=0, le=256, description="never fewer replicas than this")
    max_replicas: int | None = Field(default=None, ge=0, le=256, description="never more replicas than this")


class DeepSeekDeploymentSpec(ApiModel):
    """What the user wants: a model, a replica count and constraints; dspool decides the rest."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": SPEC_RULES},
    )

    model: str = Field(
        min_length=1,
        max_length=96,
        pattern=MODEL_ID_PATTERN,
        description="catalog model id, alias or Hugging Face repo id (deepseek-ai/DeepSeek-R1-0528)",
    )
    replicas: int = Field(default=1, ge=0, le=256)
    precision: Literal["auto"] | Precision = "auto"
    backend: Literal["auto"] | Backend = "auto"
    serving: ServingSpec = Field(default_factory=ServingSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    model_source: ModelSource | None = None
    weights: WeightsSpec | None = None
    scaling: ScalingSpec | None = None

    def bounded_replicas(self) -> tuple[int, str]:
        """The replicas dspool runs (``replicas`` within ``scaling``) and, when bounded, why."""
        low = self.scaling.min_replicas if self.scaling and self.scaling.min_replicas is not None else None
        high = self.scaling.max_replicas if self.scaling and self.scaling.max_replicas is not None else None
        if high is not None and self.replicas > high:
            return high, f"spec.replicas {self.replicas} is above scaling.maxReplicas {high}: running {high}"
        if low is not None and self.replicas < low:
            return low, f"spec.replicas {self.replicas} is below scaling.minReplicas {low}: running {low}"
        return self.replicas, ""


class NodeDevices(ApiModel):
    """Devices of one node booked for a replica."""

    name: str
    devices: int = Field(ge=1)


class ReplicaPlacement(ApiModel):
    """Where one replica runs: accelerator, layout and the nodes it holds (a reservation)."""

    replica: int = Field(ge=0)
    accelerator: str
    precision: Precision
    backend: Backend
    tensor_parallel: int = Field(ge=1)
    pipeline_parallel: int = Field(ge=1)
    data_parallel: int = Field(default=1, ge=1, description="data-parallel attention ranks (serving.parallelism)")
    max_model_len: int = Field(ge=1)
    nodes: list[NodeDevices] = Field(min_length=1)
    spec_hash: str = Field(default="", description="hash of the spec this replica was built from")

    @property
    def devices(self) -> int:
        """Devices the replica holds over all its nodes."""
        return sum(node.devices for node in self.nodes)


class Condition(ApiModel):
    """A status condition, as in metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ReplicaMove(ApiModel):
    """A replica moving make-before-break to make room for a waiting replica of another DSD."""

    # The new copy is an ordinary entry of status.placements under new_replica, so its devices are a
    # reservation like any other and survive an operator restart; this record says which two placements
    # form the move and how far it got. `replica` keeps serving until the new copy is Ready.

    replica: int = Field(ge=0, description="the replica that moves; it serves until the new copy is Ready")
    new_replica: int = Field(ge=0, description="index of the new copy in status.placements")
    accelerator: str = Field(description="accelerator of the new copy")
    from_nodes: list[NodeDevices] = Field(min_length=1)
    to_nodes: list[NodeDevices] = Field(min_length=1)
    state: MoveState = MoveState.PLANNED
    for_replica: str = Field(description="namespace/name#index of the waiting replica this move makes room for")
    started_at: str | None = Field(default=None, description="when the destination was reserved (RFC 3339)")
    ready_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="the new copy rolls back if not Ready by then (set when its weights must be fetched first: "
        "twice their estimated fetch and load time, never less than the operator's move timeout)",
    )
    reason: str = ""


class DeepSeekDeploymentStatus(ApiModel):
    """What dspool decided and observed."""

    phase: Phase = Phase.PENDING
    replicas: int = 0
    ready_replicas: int = 0
    selector: str | None = Field(default=None, description="label selector of the serving pods (scale subresource)")
    placements: list[ReplicaPlacement] = Field(default_factory=list)
    endpoint: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    message: str | None = None
    moves: list[ReplicaMove] = Field(default_factory=list, description="replicas being moved (make-before-break)")


class DeepSeekDeployment(ApiModel):
    """A DeepSeek model served on the pool."""

    api_version: Literal["dspool.io/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["DeepSeekDeployment"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DeepSeekDeploymentSpec
    status: DeepSeekDeploymentStatus | None = None

    @property
    def name(self) -> str:
        """metadata.name"""
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        """metadata.namespace"""
        return str(self.metadata.get("namespace", "default"))


def placements_from_status(status: Mapping[str, Any] | None) -> list[ReplicaPlacement]:
    """The well-formed placements (reservations) of a stored status; malformed entries are skipped."""
    placements = []
    for raw in (status or {}).get("placements") or []:
        try:
            placements.append(ReplicaPlacement.model_validate(raw))
        except ValidationError:
            continue
    return placements


MAX_LABEL_VALUE = 63


def dns_label(text: str, max_length: int) -> str:
    """``text`` as an RFC 1035 label of at most ``max_length`` characters.

    Unchanged when it already is one; otherwise lower-cased, other characters turned into ``-``,
    shortened, and a hash of the original appended so that different inputs stay different.
    """
    if re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", text) and len(text) <= max_length:
        return text
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"d-{cleaned}".rstrip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    head = cleaned[: max_length - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def deployment_label_value(dsd_name: str) -> str:
    """The ``dspool.io/deployment`` label value: the DSD name, or a hashed short form past 63 characters."""
    if len(dsd_name) <= MAX_LABEL_VALUE and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", dsd_name):
        return dsd_name
    return dns_label(dsd_name, MAX_LABEL_VALUE)


def placement_fingerprint(placement: ReplicaPlacement) -> str:
    """A short label value naming one placement: its spec hash and its nodes. Pods carry it, so pods of
    an earlier placement of the same replica (another node, another spec) are told apart."""
    nodes = ",".join(f"{node.name}:{node.devices}" for node in placement.nodes)
    return hashlib.sha256(f"{placement.spec_hash}|{nodes}".encode()).hexdigest()[:12]
