"""dspool doctor's checks on facts (the probe that reads them runs in tests/cluster/test_doctor.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from dspool.catalog import builtin_catalog
from dspool.crdgen import build_crd
from dspool.doctor import AccessCheck, ClusterFacts, Level, diagnose, exit_status, format_findings

CATALOG = builtin_catalog()
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def node(name: str, accelerator: str | None, labels: dict[str, str] | None = None, devices: int = 8) -> dict[str, Any]:
    base = CATALOG.accelerator(accelerator).node_labels(devices) if accelerator else {}
    resource = CATALOG.accelerator(accelerator).resource_name if accelerator else "nvidia.com/gpu"
    return {
        "metadata": {"name": name, "labels": {**base, **(labels or {})}},
        "spec": {},
        "status": {"allocatable": {resource: str(devices)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def healthy() -> ClusterFacts:
    crd = build_crd()
    crd["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    lease = {"metadata": {"namespace": "dspool-system"},
             "spec": {"holderIdentity": "dspool-7d4f-x2k9p", "renewTime": (NOW - timedelta(seconds=3)).isoformat(),
                      "leaseDurationSeconds": 15}}  # fmt: skip
    return ClusterFacts(
        now=NOW, stored_crd=crd, expected_crd=build_crd(), leases=[lease], lws_installed=True,
        monitoring_crds=frozenset({"servicemonitors", "podmonitors", "prometheusrules"}),
        nodes=[node("h100-0", "H100-80G", {"dspool.io/fabric": "ib-1"}),
               node("atlas-0", "Ascend910B3", {"dspool.io/fabric": "rack-c"})],
        access=[AccessCheck("list", "nodes", allowed=True)], access_subject="ServiceAccount dspool-system/dspool",
    )  # fmt: skip


def levels(facts: ClusterFacts) -> dict[str, Level]:
    return {f.check: f.level for f in diagnose(facts, CATALOG)}


def test_a_healthy_cluster_is_all_ok() -> None:
    findings = diagnose(healthy(), CATALOG)
    assert {f.level for f in findings} == {Level.OK}, format_findings(findings)
    assert exit_status(findings) == 0


def test_each_problem_is_found_with_a_fix() -> None:
    facts = healthy()
    older = build_crd()
    older["spec"]["versions"][0]["additionalPrinterColumns"].pop()
    older["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    facts.stored_crd = older
    facts.leases = [{"metadata": {"namespace": "dspool-system"},
                     "spec": {"holderIdentity": "gone", "renewTime": (NOW - timedelta(minutes=5)).isoformat(),
                              "leaseDurationSeconds": 15}}]  # fmt: skip
    facts.lws_installed = False
    facts.monitoring_crds = frozenset()
    facts.access = [AccessCheck("patch", "deepseekdeployments", "dspool.io", "ai", "status", allowed=False)]
    no_gfd = node("gpu-x", None)
    no_gfd["metadata"]["labels"] = {}
    unknown = node("mystery", "H100-80G", {"nvidia.com/gpu.product": "NVIDIA-Z9000", "dspool.io/fabric": "a"})
    ascend_without_plugin = node("atlas-1", "Ascend910B3", {"dspool.io/fabric": "rack-c"})
    ascend_without_plugin["status"]["allocatable"] = {}
    no_fabric = node("h100-1", "H100-80G")
    facts.nodes = [*facts.nodes, no_gfd, unknown, ascend_without_plugin, no_fabric]
    findings = {f.check: f for f in diagnose(facts, CATALOG)}
    assert findings["crd"].level == Level.FAIL and "charts/dspool/crds" in findings["crd"].fix
    assert findings["operator"].level == Level.FAIL and "holder gone" in findings["operator"].detail
    assert findings["rbac"].level == Level.FAIL
    assert "patch deepseekdeployments.dspool.io/status in ai" in findings["rbac"].detail
    assert findings["lws"].level == Level.WARN
    assert findings["gpu-labels"].level == Level.FAIL and "gpu-x" in findings["gpu-labels"].detail
    assert "GPU Feature Discovery" in findings["gpu-labels"].fix
    assert findings["ascend"].level == Level.FAIL and "atlas-1" in findings["ascend"].detail
    classify = findings["classify"]
    assert classify.level == Level.WARN
    assert "mystery: accelerator 'NVIDIA-Z9000' is not in the catalog" in classify.detail
    assert "atlas-1: Ascend910B3 but no allocatable huawei.com/Ascend910" in classify.detail
    assert findings["fabric"].level == Level.WARN and "H100-80G: h100-1" in findings["fabric"].detail
    assert findings["monitoring"].level == Level.WARN
    assert all(f.fix for f in findings.values() if f.level != Level.OK)
    text = format_findings(list(findings.values()))
    assert "FAIL  crd" in text and "      fix: " in text
    assert exit_status(list(findings.values())) == 1


def test_no_lease_and_no_crd_are_failures() -> None:
    facts = healthy()
    facts.stored_crd = None
    facts.leases = []
    got = levels(facts)
    assert got["crd"] == Level.FAIL and got["operator"] == Level.FAIL


def test_a_310p_node_reporting_no_memory_is_flagged_with_what_dspool_assumes() -> None:
    pro = node("atlas-300i", None, {"node.kubernetes.io/npu.chip.name": "310P3", "accelerator": "huawei-Ascend310P"})
    pro["status"]["allocatable"] = {"huawei.com/Ascend310P": "4"}
    facts = dataclasses.replace(healthy(), nodes=[*healthy().nodes, pro])
    finding = next(f for f in diagnose(facts, CATALOG) if f.check == "device-memory")
    assert finding.level == Level.WARN
    assert "atlas-300i as Ascend310P-24G (24 GiB)" in finding.detail and "dspool.io/device-memory-gib" in finding.fix
    assert next(f for f in diagnose(healthy(), CATALOG) if f.check == "device-memory").level == Level.OK
