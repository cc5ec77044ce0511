"""The model and accelerator catalog: data shipped in the package, extendable by a user file.

The catalog is plain data (``dspool/data/*.yaml``) validated by pydantic. A user file with the same
shape (``models:`` and/or ``accelerators:`` lists) adds entries or overrides fields of existing ones by
id, so a custom GPU or a new distill needs no code change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator
from pydantic.alias_generators import to_camel

CATALOG_ENV = "DSPOOL_CATALOG"
OVERRIDE_LABEL = "dspool.io/accelerator"
GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"
GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
ASCEND_CHIP_LABEL = "node.kubernetes.io/npu.chip.name"
ASCEND_ACCELERATOR_LABEL = "accelerator"
# MindCluster's device plugin (>= v7.0.RC1) labels 910-series nodes with the HBM of their NPUs, "<MiB/1024>G"
# (component/ascend-common/api/consts.go NPUChipMemoryLabel; no such label on 310P nodes).
ASCEND_MEMORY_LABEL = "mind-cluster/npu-chip-memory"
# A site's own statement of a node's device memory, for nodes whose device plugin reports none (310P).
MEMORY_OVERRIDE_LABEL = "dspool.io/device-memory-gib"

# FP8 tensor cores arrived with Ada (8.9); Ampere (8.0) and every Ascend part lack them.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


class CatalogError(ValueError):
    """A catalog file is malformed or inconsistent."""


class UnknownIdError(ValueError):
    """An id that is not in the catalog; the message lists the valid choices."""

    def __init__(self, kind: str, given: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.given = given
        self.valid = sorted(valid, key=str.lower)
        super().__init__(f"unknown {kind} {given!r}; valid {kind}s: {', '.join(self.valid)}")


class Precision(StrEnum):
    """Weight precisions the planner understands."""

    FP8 = "fp8"
    BF16 = "bf16"
    W8A8 = "w8a8"
    W8A16 = "w8a16"


class Vendor(StrEnum):
    """Accelerator vendors; each has its own device plugin and serving backend."""

    NVIDIA = "nvidia"
    ASCEND = "ascend"


class _CatalogModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSpec(_CatalogModel):
    """Architecture numbers of one model, as the sizing planner needs them."""

    id: str
    hf_id: str
    aliases: dict[str, str] = Field(default_factory=dict, description="alias id -> Hugging Face id")
    alias_of: str | None = Field(default=None, description="set when this entry was resolved from an alias")
    family: str
    attention: Literal["mla", "gqa"]
    moe: bool = False
    params_b: float = Field(gt=0, description="parameters, billions")
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    mla_kv_lora_rank: int | None = None
    mla_rope_head_dim: int | None = None
    max_context: int = Field(gt=0)
    native_precision: Precision
    checkpoint_gib: dict[Precision, float] = Field(default_factory=dict, alias="checkpointGiB")
    # What the engines check against the parallel layout at start (docs/sizing.md, "Layouts the engines
    # accept"): config.json's intermediate_size, moe_intermediate_size, n_routed_experts and the FP8
    # checkpoint's quantization_config.weight_block_size.
    intermediate_size: int | None = Field(
        default=None, gt=0, description="dense MLP width (config.json intermediate_size); unknown = not checked"
    )
    moe_intermediate_size: int | None = Field(default=None, gt=0, description="one routed expert's MLP width")
    routed_experts: int | None = Field(default=None, gt=0, description="config.json n_routed_experts")
    weight_block_size: int | None = Field(
        default=None, gt=0, description="block of the block-wise FP8 checkpoint (128 x 128 for DeepSeek-V3)"
    )
    dense_params_b: float | None = Field(
        default=None, gt=0, description="parameters outside the routed experts, billions (replicated under EP)"
    )
    vocab_size: int | None = Field(default=None, gt=0, description="config.json vocab_size (the sampler's logits)")
    experts_per_token: int = Field(default=8, gt=0, description="config.json num_experts_per_tok (MoE)")
    replicated_params_b: float = Field(
        default=0, ge=0, description="parameters every TP rank holds whole (vLLM's fused_qkv_a_proj and router)"
    )
    mtp_params_b: float = Field(
        default=0, ge=0, description="multi-token-prediction module, billions, included in the checkpoint sizes"
    )
    # Which engine releases serve the checkpoint is keyed by its architecture (dspool.engine_support).
    architecture: str | None = Field(default=None, description="config.json architectures[0]")
    # DeepSeek Sparse Attention (V3.2): the lightning indexer keeps one key of index_head_dim per token and
    # layer besides the MLA latent, and picks index_topk tokens per query (config.json index_*).
    index_n_heads: int | None = Field(default=None, gt=0, description="config.json index_n_heads (DSA indexer)")
    index_head_dim: int | None = Field(default=None, gt=0, description="config.json index_head_dim (DSA indexer)")
    index_topk: int | None = Field(default=None, gt=0, description="config.json index_topk (tokens attended)")
    license: str | None = Field(default=None, description="the checkpoint's license (model card)")

    @model_validator(mode="after")
    def _check_attention(self) -> ModelSpec:
        if self.attention == "mla" and (self.mla_kv_lora_rank is None or self.mla_rope_head_dim is None):
            raise ValueError(f"model {self.id}: MLA needs mlaKvLoraRank and mlaRopeHeadDim")
        if self.attention == "gqa" and self.attention_heads % self.kv_heads:
            raise ValueError(f"model {self.id}: attentionHeads must be a multiple of kvHeads")
        if self.moe and (self.moe_intermediate_size is None or self.routed_experts is None):
            raise ValueError(f"model {self.id}: MoE models need moeIntermediateSize and routedExperts")
        indexer = (self.index_n_heads, self.index_head_dim, self.index_topk)
        if any(v is not None for v in indexer) and (None in indexer or self.attention != "mla"):
            raise ValueError(f"model {self.id}: sparse attention needs MLA and indexNHeads, indexHeadDim, indexTopk")
        return self

    @property
    def sparse_attention(self) -> bool:
        """Whether the model runs DeepSeek Sparse Attention (a lightning indexer with its own key cache)."""
        return self.index_head_dim is not None

    @property
    def checkpoint_params_b(self) -> float:
        """Parameters of the published checkpoint: the model plus its MTP module, if any."""
        return self.params_b + self.mtp_params_b

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token over all layers, BF16, for one full copy of the cache (with the DSA
        indexer's key, when the model has one). What each engine really stores: ``dspool.sizing.kv_layout``."""
        if self.attention == "mla":
            assert self.mla_kv_lora_rank is not None and self.mla_rope_head_dim is not None
            indexer = self.index_head_dim or 0
            return (self.mla_kv_lora_rank + self.mla_rope_head_dim + indexer) * 2 * self.layers
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


class AcceleratorSpec(_CatalogModel):
    """One accelerator kind: memory, capabilities, server size and how nodes advertise it."""

    id: str
    vendor: Vendor
    architecture: str
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    memory_gib: float = Field(gt=0, alias="memoryGiB")
    bandwidth_tbs: float | None = Field(default=None, alias="bandwidthTBs")
    bf16_tflops: float | None = None
    devices_per_node: int = Field(default=8, gt=0)
    intra_node_link: str = ""
    multi_node: bool = True
    gfd_product: str | None = None
    product_pattern: str | None = None
    memory_mib_range: tuple[int, int] | None = Field(default=None, alias="memoryMiBRange")
    npu_chip_name: str | None = None
    other_chip_names: tuple[str, ...] = Field(
        default=(), description="further chip names the device plugin reports for this part (e.g. 910B2C)"
    )
    implied_by_labels: dict[str, str] = Field(
        default_factory=dict,
        description="when the node reports no memory, these labels (all) tell this entry from a same-chip sibling",
    )

    @model_validator(mode="after")
    def _check_vendor_fields(self) -> AcceleratorSpec:
        if self.vendor == Vendor.NVIDIA and (self.compute_capability is None or self.product_pattern is None):
            raise ValueError(f"accelerator {self.id}: NVIDIA entries need computeCapability and productPattern")
        if self.vendor == Vendor.ASCEND and self.npu_chip_name is None:
            raise ValueError(f"accelerator {self.id}: Ascend entries need npuChipName")
        if self.product_pattern is not None:
            try:
                re.compile(self.product_pattern)
            except re.error as exc:
                raise ValueError(f"accelerator {self.id}: bad productPattern: {exc}") from exc
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fp8(self) -> bool:
        """Whether the device runs FP8 natively (NVIDIA compute capability >= 8.9)."""
        if self.vendor != Vendor.NVIDIA or self.compute_capability is None:
            return False
        major, minor = (int(part) for part in self.compute_capability.split("."))
        return (major, minor) >= FP8_MIN_COMPUTE_CAPABILITY

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resource_name(self) -> str:
        """The extended resource the device plugin advertises."""
        if self.vendor == Vendor.NVIDIA:
            return "nvidia.com/gpu"
        return "huawei.com/Ascend310P" if self.architecture == "ascend-310p" else "huawei.com/Ascend910"

    @property
    def precisions(self) -> tuple[Precision, ...]:
        """Precisions this hardware can run."""
        base = (Precision.BF16, Precision.W8A8, Precision.W8A16)
        return (Precision.FP8, *base) if self.fp8 else base

    @property
    def memory_mib(self) -> int:
        """Device memory in MiB, as GFD reports it."""
        return round(self.memory_gib * 1024)

    def node_labels(self, device_count: int | None = None) -> dict[str, str]:
        """The labels a real node carrying this accelerator has (GFD or the Ascend device plugin)."""
        count = str(device_count if device_count is not None else self.devices_per_node)
        if self.vendor == Vendor.NVIDIA:
            assert self.compute_capability is not None and self.gfd_product is not None
            major, minor = self.compute_capability.split(".")
            return {
                "nvidia.com/gpu.present": "true",
                GFD_PRODUCT_LABEL: self.gfd_product,
                GFD_MEMORY_LABEL: str(self.memory_mib),
                "nvidia.com/gpu.count": count,
                "nvidia.com/gpu.family": self.architecture,
                "nvidia.com/gpu.compute.major": major,
                "nvidia.com/gpu.compute.minor": minor,
            }
        assert self.npu_chip_name is not None
        is_310p = self.architecture == "ascend-310p"
        labels = {
            ASCEND_ACCELERATOR_LABEL: "huawei-Ascend310P" if is_310p else "huawei-Ascend910",
            "accelerator-type": f"card-310p-{count}" if is_310p else f"module-910b-{count}",
            ASCEND_CHIP_LABEL: self.npu_chip_name,
            "host-arch": "huawei-arm",
            "servertype": f"Ascend{self.npu_chip_name}-20",
            **self.implied_by_labels,
        }
        if not is_310p:
            labels[ASCEND_MEMORY_LABEL] = f"{round(self.memory_gib)}G"
        return labels

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels carries this accelerator (ignores the override label)."""
        if self.vendor == Vendor.NVIDIA:
            product = labels.get(GFD_PRODUCT_LABEL)
            if not product or self.product_pattern is None:
                return False
            product = re.sub(r"(-SHARED|-MIG-.*)$", "", product, flags=re.IGNORECASE)
            if not re.search(self.product_pattern, product, flags=re.IGNORECASE):
                return False
            return self._memory_matches(labels)
        chip = labels.get(ASCEND_CHIP_LABEL, "").lower()
        names = {name.lower() for name in (self.npu_chip_name or "", *self.other_chip_names) if name}
        return bool(chip) and chip in names and self._memory_matches(labels)

    def _memory_matches(self, labels: Mapping[str, str]) -> bool:
        """The memory the node reports is in this entry's range; unreported: the implying labels decide."""
        if self.memory_mib_range is None:
            return True
        memory = reported_memory_mib(labels)
        if memory is None:
            return all(labels.get(key) == value for key, value in self.implied_by_labels.items())
        low, high = self.memory_mib_range
        return low <= memory < high


def reported_memory_mib(labels: Mapping[str, str]) -> int | None:
    """The device memory a node reports, MiB: the site's ``dspool.io/device-memory-gib``, else GFD's
    ``nvidia.com/gpu.memory`` (MiB), else MindCluster's ``mind-cluster/npu-chip-memory`` ("64G"); None if none."""
    override = labels.get(MEMORY_OVERRIDE_LABEL)
    if override:
        try:
            gib = float(override)
        except ValueError:
            gib = 0.0
        if gib > 0:
            return round(gib * 1024)
    gfd = _int_or_none(labels.get(GFD_MEMORY_LABEL))
    if gfd is not None and gfd > 0:
        return gfd
    ascend = re.fullmatch(r"(\d+)G", labels.get(ASCEND_MEMORY_LABEL, "").strip(), flags=re.IGNORECASE)
    return int(ascend.group(1)) * 1024 if ascend else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Catalog(BaseModel):
    """Models and accelerators, looked up case-insensitively by id (models also by alias)."""

    model_config = ConfigDict(frozen=True)

    models: tuple[ModelSpec, ...]
    accelerators: tuple[AcceleratorSpec, ...]

    @model_validator(mode="after")
    def _check_unique(self) -> Catalog:
        for kind, ids in (
            ("model", [m.id for m in self.models] + [a for m in self.models for a in m.aliases]),
            ("accelerator", [a.id for a in self.accelerators]),
        ):
            seen: set[str] = set()
            for entry_id in ids:
                if entry_id.lower() in seen:
                    raise ValueError(f"duplicate {kind} id {entry_id!r}")
                seen.add(entry_id.lower())
        return self

    @property
    def model_ids(self) -> list[str]:
        """Every model id and alias, in catalog order."""
        return [name for m in self.models for name in (m.id, *m.aliases)]

    @property
    def accelerator_ids(self) -> list[str]:
        """Every accelerator id, in catalog order."""
        return [a.id for a in self.accelerators]

    def model(self, model_id: str) -> ModelSpec:
        """The model with this id, alias or Hugging Face repo id (``deepseek-ai/DeepSeek-R1-0528``); an alias
        resolves to its base entry with the alias's HF id. The id returned is always dspool's own."""
        wanted = model_id.strip().lower()
        for entry in self.models:
            if wanted in (entry.id.lower(), entry.hf_id.lower()):
                return entry
            for alias, hf_id in entry.aliases.items():
                if wanted in (alias.lower(), hf_id.lower()):
                    return entry.model_copy(update={"id": alias, "hf_id": hf_id, "alias_of": entry.id})
        raise UnknownIdError("model", model_id, self.model_ids)

    def accelerator(self, accelerator_id: str) -> AcceleratorSpec:
        """The accelerator with this id, matched case-insensitively."""
        wanted = accelerator_id.strip().lower()
        for entry in self.accelerators:
            if entry.id.lower() == wanted:
                return entry
        raise UnknownIdError("accelerator", accelerator_id, self.accelerator_ids)

    def identify_node(self, labels: Mapping[str, str]) -> AcceleratorSpec | None:
        """The accelerator a node carries, from its labels; the override label wins; None if unknown."""
        override = labels.get(OVERRIDE_LABEL)
        if override:
            try:
                return self.accelerator(override)
            except UnknownIdError:
                return None
        for entry in self.accelerators:
            if entry.matches_labels(labels):
                return entry
        return None


def _merge_entries(base: list[dict[str, Any]], extra: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Entries of ``extra`` override fields of same-id entries of ``base`` or are appended."""
    merged = [dict(entry) for entry in base]
    index = {str(entry.get("id", "")).lower(): i for i, entry in enumerate(merged)}
    for entry in extra:
        if not isinstance(entry, dict) or "id" not in entry:
            raise CatalogError(f"every {kind} entry needs an 'id'")
        key = str(entry["id"]).lower()
        if key in index:
            merged[index[key]] = {**merged[index[key]], **entry, "id": merged[index[key]]["id"]}
        else:
            index[key] = len(merged)
            merged.append(dict(entry))
    return merged


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping with 'models' and/or 'accelerators'")
    unknown = set(data) - {"models", "accelerators"}
    if unknown:
        raise CatalogError(f"{source}: unknown top-level keys {sorted(unknown)}; expected models, accelerators")
    for key in ("models", "accelerators"):
        if not isinstance(data.get(key, []), list):
            raise CatalogError(f"{source}: '{key}' must be a list")
    return data


@cache
def _builtin_raw() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data_dir = resources.files("dspool") / "data"
    models = _read_yaml((data_dir / "models.yaml").read_text(), "models.yaml")["models"]
    accelerators = _read_yaml((data_dir / "accelerators.yaml").read_text(), "accelerators.yaml")["accelerators"]
    return models, accelerators


def load_catalog(extra_path: str | Path | None = None) -> Catalog:
    """The built-in catalog, extended by ``extra_path`` (or the file named by $DSPOOL_CATALOG)."""
    models, accelerators = _builtin_raw()
    path = extra_path if extra_path is not None else os.environ.get(CATALOG_ENV) or None
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CatalogError(f"cannot read catalog file {path}: {exc.strerror}") from exc
        extra = _read_yaml(text, str(path))
        models = _merge_entries(models, extra.get("models", []), "model")
        accelerators = _merge_entries(accelerators, extra.get("accelerators", []), "accelerator")
    try:
        return Catalog.model_validate({"models": models, "accelerators": accelerators})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CatalogError(f"catalog{f' {path}' if path else ''}: {where}: {first['msg']}") from exc


@cache
def builtin_catalog() -> Catalog:
    """The catalog shipped in the package, without user overrides (cached)."""
    models, accelerators = _builtin_raw()
    return Catalog.model_validate({"models": models, "accelerators": accelerators})
