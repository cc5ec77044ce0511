"""``dspool doctor``: is this cluster ready for dspool, and if not, what to fix (pure: checks on gathered facts).

:mod:`dspool.kube.doctor_probe` reads the cluster into :class:`ClusterFacts`; :func:`diagnose` turns them into
findings, each OK, WARN or FAIL with the fix. What is checked, and where each expectation comes from:

- **crd**: the DeepSeekDeployment CRD exists and equals the one this dspool generates (``dspool.crdgen``):
  versions, schema, printer columns, subresources. Helm never upgrades ``crds/``; the chart's pre-upgrade hook
  (``crdUpgrade``) or ``kubectl apply --server-side -f charts/dspool/crds/`` does.
- **operator**: a Lease named ``dspool-operator`` (the chart's ``operator.leaseName``) has a holder that renewed
  it within twice its duration (:mod:`dspool.kube.lease` renews every ``leaseSeconds / 5``).
- **rbac**: the operator's ServiceAccount (or, without one, the caller) may do what ``dspool run`` does: the
  reads and writes of the chart's ``templates/rbac.yaml`` (SubjectAccessReview / SelfSubjectAccessReview).
- **lws**: the LeaderWorkerSet CRD; without it multi-node replicas run as StatefulSets (no group restart).
- **gpu-labels**: nodes advertising ``nvidia.com/gpu`` carry GPU Feature Discovery's ``nvidia.com/gpu.product``
  (how dspool tells an H100 from an L20; GFD is part of the GPU Operator).
- **ascend**: nodes advertising ``huawei.com/Ascend910``/``Ascend310P`` carry the Ascend device plugin's
  labels (``node.kubernetes.io/npu.chip.name``, ``accelerator``), and nodes labelled as Ascend servers
  advertise the resource (a device plugin that is not running advertises none).
- **classify**: accelerator nodes dspool cannot use, and why (not Ready, cordoned, product unknown to the
  catalog, no allocatable devices).
- **fabric**: multi-node replicas are gang-placed inside one value of the fabric label (``dspool.io/fabric``);
  nodes of a type without it cannot host a gang.
- **monitoring**: the prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule) the chart's
  ``monitoring.*`` objects need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dspool.catalog import (
    ASCEND_ACCELERATOR_LABEL,
    ASCEND_CHIP_LABEL,
    ASCEND_MEMORY_LABEL,
    GFD_PRODUCT_LABEL,
    MEMORY_OVERRIDE_LABEL,
    OVERRIDE_LABEL,
    Catalog,
    reported_memory_mib,
)
from dspool.inventory import DEFAULT_FABRIC_LABEL, node_from_k8s

NVIDIA_RESOURCE = "nvidia.com/gpu"
ASCEND_RESOURCES = ("huawei.com/Ascend910", "huawei.com/Ascend310P")
MONITORING_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")
CRD_FIX = (
    "helm upgrade the dspool release (its crdUpgrade hook applies the CRD), or "
    "kubectl apply --server-side -f charts/dspool/crds/"
)


class Level(StrEnum):
    """How bad a finding is."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One check's result; ``fix`` says what to do when it is not OK."""

    check: str
    level: Level
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class AccessCheck:
    """One permission ``dspool run`` needs, and whether the API server grants it."""

    verb: str
    resource: str
    group: str = ""
    namespace: str = ""
    subresource: str = ""
    allowed: bool = False
    reason: str = ""

    def describe(self) -> str:
        """``verb group/resource[/sub] [in ns]``, as kubectl auth can-i says it."""
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        if self.subresource:
            what += f"/{self.subresource}"
        return f"{self.verb} {what}" + (f" in {self.namespace}" if self.namespace else "")


@dataclass
class ClusterFacts:
    """What the probe read from the cluster."""

    now: datetime
    stored_crd: Mapping[str, Any] | None
    expected_crd: Mapping[str, Any]
    leases: Sequence[Mapping[str, Any]] = ()
    lease_name: str = "dspool-operator"
    lws_installed: bool = False
    monitoring_crds: frozenset[str] = frozenset()
    nodes: Sequence[Mapping[str, Any]] = ()
    access: Sequence[AccessCheck] = ()
    access_subject: str = ""
    fabric_label: str = DEFAULT_FABRIC_LABEL
    unreadable: Sequence[str] = field(default_factory=list)  # what the caller could not read, and why


def _version_digest(version: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": version.get("name"),
        "served": version.get("served"),
        "storage": version.get("storage"),
        "schema": version.get("schema"),
        "subresources": version.get("subresources") or {},
        "columns": version.get("additionalPrinterColumns") or [],
    }


def check_crd(stored: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> Finding:
    """The CRD is installed and the one this dspool expects."""
    name = expected["metadata"]["name"]
    if stored is None:
        return Finding("crd", Level.FAIL, f"CRD {name} is not installed", CRD_FIX)
    conditions = (stored.get("status") or {}).get("conditions") or []
    if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
        return Finding("crd", Level.FAIL, f"CRD {name} is not Established", f"kubectl describe crd {name}")
    stored_versions = [_version_digest(v) for v in stored["spec"].get("versions") or []]
    expected_versions = [_version_digest(v) for v in expected["spec"]["versions"]]
    if stored_versions != expected_versions:
        names = ", ".join(str(v["name"]) for v in stored_versions)
        return Finding(
            "crd", Level.FAIL, f"CRD {name} (versions {names}) differs from this dspool's: an older or newer release",
            CRD_FIX,
        )  # fmt: skip
    return Finding("crd", Level.OK, f"CRD {name} installed and current")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def check_operator(leases: Sequence[Mapping[str, Any]], lease_name: str, now: datetime) -> Finding:
    """An operator holds the Lease and keeps renewing it."""
    fix = (
        "install the chart (helm install dspool charts/dspool -n dspool-system --create-namespace), or see why the "
        "operator does not run: kubectl -n <namespace> get pods -l app.kubernetes.io/name=dspool; "
        "kubectl -n <namespace> logs deploy/<release>"
    )
    if not leases:
        return Finding("operator", Level.FAIL, f"no Lease {lease_name} in any namespace: no operator has run", fix)
    for lease in leases:
        spec = lease.get("spec") or {}
        where = f"{lease['metadata']['namespace']}/{lease_name}"
        holder = spec.get("holderIdentity")
        renewed = _parse_time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or 15)
        if holder and renewed is not None and (now - renewed).total_seconds() <= 2 * duration:
            age = max(0.0, (now - renewed).total_seconds())
            return Finding("operator", Level.OK, f"Lease {where} held by {holder}, renewed {age:.0f}s ago")
    stale = ", ".join(
        f"{lease['metadata']['namespace']}/{lease_name} (holder {(lease.get('spec') or {}).get('holderIdentity')})"
        for lease in leases
    )
    return Finding("operator", Level.FAIL, f"no operator renews its Lease: {stale}", fix)


def check_access(access: Sequence[AccessCheck], subject: str) -> Finding:
    """The operator may do what dspool run does."""
    denied = [a for a in access if not a.allowed]
    if not access:
        return Finding("rbac", Level.WARN, "could not ask the API server what the operator may do",
                       "run dspool doctor as a user allowed to create subjectaccessreviews")  # fmt: skip
    if denied:
        missing = "; ".join(a.describe() for a in denied)
        return Finding(
            "rbac", Level.FAIL, f"{subject} may not: {missing}",
            "install with rbac.create=true (the chart's templates/rbac.yaml), or grant these verbs to the "
            "operator's ServiceAccount",
        )  # fmt: skip
    return Finding("rbac", Level.OK, f"{subject} may do all {len(access)} things dspool run does")


def check_lws(installed: bool) -> Finding:
    """LeaderWorkerSet for multi-node replicas."""
    if installed:
        return Finding("lws", Level.OK, "LeaderWorkerSet CRD installed: multi-node replicas run as LeaderWorkerSets")
    return Finding(
        "lws", Level.WARN,
        "LeaderWorkerSet is not installed: multi-node replicas (R1/V3 over several nodes) run as StatefulSets, "
        "without LWS's all-or-nothing group restart",
        "install LWS (docs/install.md, 'LeaderWorkerSet'); dspool picks it up while running",
    )  # fmt: skip


def _allocatable(node: Mapping[str, Any], resource: str) -> int:
    value = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _labels(node: Mapping[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def _name(node: Mapping[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name"))


def _sample(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_gpu_labels(nodes: Sequence[Mapping[str, Any]]) -> Finding:
    """GPU nodes carry the GFD labels dspool identifies them by."""
    gpu_nodes = [n for n in nodes if _allocatable(n, NVIDIA_RESOURCE) > 0]
    unlabelled = [_name(n) for n in gpu_nodes if GFD_PRODUCT_LABEL not in _labels(n)]
    if unlabelled:
        return Finding(
            "gpu-labels", Level.FAIL,
            f"{len(unlabelled)} node(s) advertise {NVIDIA_RESOURCE} without the {GFD_PRODUCT_LABEL} label: "
            f"{_sample(unlabelled)}",
            "deploy GPU Feature Discovery (the GPU Operator's gfd, or the nvidia-device-plugin chart with "
            "gfd.enabled=true), or label each node dspool.io/accelerator=<catalog id>",
        )  # fmt: skip
    if not gpu_nodes:
        return Finding("gpu-labels", Level.OK, f"no node advertises {NVIDIA_RESOURCE} (no NVIDIA GPUs)")
    return Finding("gpu-labels", Level.OK, f"{len(gpu_nodes)} GPU node(s) carry {GFD_PRODUCT_LABEL}")


def check_ascend(nodes: Sequence[Mapping[str, Any]]) -> Finding:
    """Ascend nodes carry the device plugin's labels and advertise its resource."""
    problems = []
    with_resource = [n for n in nodes if any(_allocatable(n, r) > 0 for r in ASCEND_RESOURCES)]
    unlabelled = [_name(n) for n in with_resource if not {ASCEND_CHIP_LABEL, OVERRIDE_LABEL} & set(_labels(n))]
    if unlabelled:
        problems.append(f"{len(unlabelled)} node(s) advertise huawei.com/Ascend* without {ASCEND_CHIP_LABEL}: "
                        f"{_sample(unlabelled)}")  # fmt: skip
    labelled = [n for n in nodes if _labels(n).get(ASCEND_ACCELERATOR_LABEL, "").startswith("huawei-Ascend")]
    no_resource = [_name(n) for n in labelled if not any(_allocatable(n, r) > 0 for r in ASCEND_RESOURCES)]
    if no_resource:
        problems.append(f"{len(no_resource)} node(s) labelled {ASCEND_ACCELERATOR_LABEL}=huawei-Ascend* advertise "
                        f"no huawei.com/Ascend910 or Ascend310P devices: {_sample(no_resource)}")  # fmt: skip
    if problems:
        return Finding(
            "ascend", Level.FAIL, "; ".join(problems),
            "run the Ascend device plugin (MindCluster ascend-device-plugin DaemonSet) on these nodes and label "
            "them as its docs say (node.kubernetes.io/npu.chip.name, accelerator, accelerator-type)",
        )  # fmt: skip
    if not with_resource:
        return Finding("ascend", Level.OK, "no node advertises Ascend NPUs")
    return Finding("ascend", Level.OK, f"{len(with_resource)} Ascend node(s) carry the device plugin's labels")


def check_device_memory(nodes: Sequence[Mapping[str, Any]], catalog: Catalog) -> Finding:
    """Nodes whose part dspool tells from a same-chip sibling by memory, but which report none: it assumes."""
    assumed = []
    for node in nodes:
        labels = _labels(node)
        accelerator = catalog.identify_node(labels)
        if accelerator is not None and accelerator.memory_mib_range is not None and reported_memory_mib(labels) is None:
            assumed.append(f"{_name(node)} as {accelerator.id} ({accelerator.memory_gib:g} GiB)")
    if assumed:
        return Finding(
            "device-memory", Level.WARN,
            f"{len(assumed)} node(s) report no device memory, so dspool assumes it: {_sample(assumed)}",
            f"label them {MEMORY_OVERRIDE_LABEL}=<GiB per device> (or run MindCluster's device plugin >= v7.0.RC1, "
            f"which labels {ASCEND_MEMORY_LABEL} on 910 nodes)",
        )  # fmt: skip
    return Finding("device-memory", Level.OK, "every node whose part depends on its memory reports it")


def _why_unusable(node: Mapping[str, Any], catalog: Catalog) -> str:
    spec, labels = node.get("spec") or {}, _labels(node)
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or [])  # fmt: skip
    if not ready:
        return "not Ready"
    if spec.get("unschedulable"):
        return "cordoned"
    accelerator = catalog.identify_node(labels)
    if accelerator is None:
        product = labels.get(GFD_PRODUCT_LABEL) or labels.get(ASCEND_CHIP_LABEL) or labels.get(OVERRIDE_LABEL)
        return f"accelerator {product!r} is not in the catalog" if product else "no accelerator label"
    if _allocatable(node, accelerator.resource_name) <= 0:
        return f"{accelerator.id} but no allocatable {accelerator.resource_name}"
    return "tainted unreachable or not-ready"


def check_classification(nodes: Sequence[Mapping[str, Any]], catalog: Catalog, fabric_label: str) -> Finding:
    """Accelerator nodes dspool cannot place on, and why."""
    accelerator_nodes = [
        n for n in nodes
        if any(_allocatable(n, r) > 0 for r in (NVIDIA_RESOURCE, *ASCEND_RESOURCES))
        or GFD_PRODUCT_LABEL in _labels(n) or ASCEND_CHIP_LABEL in _labels(n)
    ]  # fmt: skip
    unusable = [
        (n, _why_unusable(n, catalog)) for n in accelerator_nodes if node_from_k8s(n, catalog, fabric_label) is None
    ]
    if unusable:
        reasons = "; ".join(f"{_name(n)}: {why}" for n, why in unusable[:8])
        more = f" (and {len(unusable) - 8} more)" if len(unusable) > 8 else ""
        return Finding(
            "classify", Level.WARN, f"{len(unusable)} accelerator node(s) dspool cannot use: {reasons}{more}",
            "an unknown product: add it with the chart's catalog value (or dspool --catalog); a node without "
            "devices: check its device plugin; cordoned or not Ready: nothing to do if intended",
        )  # fmt: skip
    return Finding("classify", Level.OK, f"dspool identifies all {len(accelerator_nodes)} accelerator node(s)")


def check_fabric(nodes: Sequence[Mapping[str, Any]], catalog: Catalog, fabric_label: str) -> Finding:
    """Nodes carry the fabric label that bounds gang placement."""
    by_type: dict[str, list[str]] = {}
    unlabelled: dict[str, list[str]] = {}
    for node in nodes:
        state = node_from_k8s(node, catalog, fabric_label)
        if state is None:
            continue
        by_type.setdefault(state.accelerator, []).append(state.name)
        if state.fabric is None:
            unlabelled.setdefault(state.accelerator, []).append(state.name)
    if unlabelled:
        detail = "; ".join(f"{accelerator}: {_sample(names)}" for accelerator, names in sorted(unlabelled.items()))
        return Finding(
            "fabric", Level.WARN,
            f"nodes without the {fabric_label} label cannot host multi-node replicas (gangs stay in one fabric): "
            f"{detail}",
            f"kubectl label node <node> {fabric_label}=<rack or InfiniBand/RoCE domain>",
        )  # fmt: skip
    if not by_type:
        return Finding("fabric", Level.OK, "no usable accelerator nodes to check")
    return Finding("fabric", Level.OK, f"every usable accelerator node carries {fabric_label}")


def check_monitoring(present: frozenset[str]) -> Finding:
    """The prometheus-operator CRDs the chart's monitoring objects need."""
    missing = [name for name in MONITORING_CRDS if name not in present]
    if missing:
        return Finding(
            "monitoring", Level.WARN,
            f"no {', '.join(missing)} CRD (monitoring.coreos.com): the chart's monitoring.serviceMonitor, "
            "podMonitor and prometheusRule cannot be enabled",
            "install kube-prometheus-stack (or prometheus-operator's CRDs), or leave monitoring.* off",
        )  # fmt: skip
    return Finding("monitoring", Level.OK, "prometheus-operator CRDs: ServiceMonitor, PodMonitor, PrometheusRule")


def diagnose(facts: ClusterFacts, catalog: Catalog) -> list[Finding]:
    """Every check, in the order a reader fixes them."""
    findings = [
        check_crd(facts.stored_crd, facts.expected_crd),
        check_operator(facts.leases, facts.lease_name, facts.now),
        check_access(facts.access, facts.access_subject),
        check_lws(facts.lws_installed),
        check_gpu_labels(facts.nodes),
        check_ascend(facts.nodes),
        check_device_memory(facts.nodes, catalog),
        check_classification(facts.nodes, catalog, facts.fabric_label),
        check_fabric(facts.nodes, catalog, facts.fabric_label),
        check_monitoring(facts.monitoring_crds),
    ]
    findings += [Finding("access", Level.FAIL, why, "run dspool doctor with a kubeconfig that may read it")
                 for why in facts.unreadable]  # fmt: skip
    return findings


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per check (``LEVEL  check  detail``), with the fix indented below each WARN or FAIL."""
    lines = []
    for finding in findings:
        lines.append(f"{finding.level.value:<4}  {finding.check:<10}  {finding.detail}")
        if finding.level != Level.OK and finding.fix:
            lines.append(f"{'':<4}  {'':<10}  fix: {finding.fix}")
    return "\n".join(lines)


def exit_status(findings: Sequence[Finding]) -> int:
    """1 when any check failed, else 0 (warnings do not fail)."""
    return 1 if any(f.level == Level.FAIL for f in findings) else 0
