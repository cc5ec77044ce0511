"""The CRD generated from the pydantic models."""

from __future__ import annotations

from pathlib import Path

from dspool import crdgen

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_models() -> None:
    assert (ROOT / "crds" / crdgen.CRD_FILE).read_text() == crdgen.render(), "run 'make crds'"


def test_crd_has_scale_subresource_printer_columns_and_cel_rules() -> None:
    version = crdgen.build_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Model",
        "Precision",
        "Accelerator",
        "Replicas",
        "Ready",
        "Phase",
        "Weights",
        "Age",
    ]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert any("mindie" in rule["rule"] for rule in spec["x-kubernetes-validations"])
    assert spec["properties"]["replicas"]["minimum"] == 0
    assert spec["properties"]["precision"]["enum"] == ["auto", "fp8", "bf16", "w8a8", "w8a16"]


def test_schema_is_structural() -> None:
    def walk(node: object) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node and "anyOf" not in node and "const" not in node
            if "properties" in node:
                assert node.get("type") == "object"
                assert "additionalProperties" not in node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(crdgen.build_crd()["spec"]["versions"][0]["schema"])
