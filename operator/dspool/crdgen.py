"""Generate the CustomResourceDefinition from the pydantic models in :mod:`dspool.api`.

``python -m dspool.crdgen crds`` writes ``crds/deepseekdeployments.yaml``; ``--check`` fails when the
committed file differs (CI runs it), so the models stay the single source of truth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from dspool import api

CRD_FILE = f"{api.PLURAL}.yaml"
_DROP_KEYS = {"title", "$defs"}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Resolve $ref, collapse Optional/Literal unions and translate JSON Schema to Kubernetes' OpenAPI v3."""
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _inline(merged, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP_KEYS:
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields; kubectl's strict validation reports them
        out[key] = value if key in ("default", "x-kubernetes-validations", "enum") else _inline(value, defs)
    if "anyOf" in out:
        out = _collapse_any_of(out)
    if "const" in out:
        out.setdefault("type", "string")
        out["enum"] = [out.pop("const")]
    if "exclusiveMinimum" in out and not isinstance(out["exclusiveMinimum"], bool):
        out["minimum"] = out["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in out and not isinstance(out["exclusiveMaximum"], bool):
        out["maximum"] = out["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    if out.get("default") is None:
        out.pop("default", None)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _collapse_any_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Optional[X] -> X; unions of string enums/consts -> one string enum."""
    options = [o for o in schema.pop("anyOf") if o.get("type") != "null"]
    if len(options) == 1:
        return {**options[0], **schema}
    if all(o.get("type") == "string" and "enum" in o for o in options):
        values: list[Any] = [v for o in options for v in o["enum"]]
        return {**schema, "type": "string", "enum": values}
    raise ValueError(f"cannot express union in a structural schema: {options}")


def openapi_schema(model: type[api.ApiModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    return result


# kubectl get's columns: (name, type, JSON path).
_PRINTER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Model", "string", ".spec.model"),
    ("Precision", "string", ".status.placements[0].precision"),
    ("Accelerator", "string", ".status.placements[0].accelerator"),
    ("Replicas", "integer", ".spec.replicas"),
    ("Ready", "integer", ".status.readyReplicas"),
    ("Phase", "string", ".status.phase"),
    ("Weights", "string", '.status.conditions[?(@.type=="WeightsReady")].status'),
    ("Age", "date", ".metadata.creationTimestamp"),
)


def build_crd() -> dict[str, Any]:
    """The DeepSeekDeployment CRD as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": _names(),
            "versions": [_served_version()],
        },
    }


def _names() -> dict[str, Any]:
    """The kind, its plural, singular and short names, and the ``kubectl get dspool`` category."""
    return {
        "kind": api.KIND,
        "listKind": f"{api.KIND}List",
        "plural": api.PLURAL,
        "singular": api.SINGULAR,
        "shortNames": api.SHORT_NAMES,
        "categories": ["dspool"],
    }


def _served_version() -> dict[str, Any]:
    """The one served and stored version: status and scale subresources, printer columns, the schema."""
    return {
        "name": api.VERSION,
        "served": True,
        "storage": True,
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": [
            {"name": name, "type": kind, "jsonPath": path} for name, kind, path in _PRINTER_COLUMNS
        ],
        "schema": {"openAPIV3Schema": _resource_schema()},
    }


def _resource_schema() -> dict[str, Any]:
    """The whole resource's schema: the spec and status schemas from the pydantic models."""
    spec_schema = openapi_schema(api.DeepSeekDeploymentSpec)
    spec_schema["description"] = "What to serve; dspool sizes, places and runs it."
    status_schema = openapi_schema(api.DeepSeekDeploymentStatus)
    status_schema["description"] = "What dspool decided and observed."
    return {
        "type": "object",
        "description": "A DeepSeek model served on the pooled accelerators.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }


def render() -> str:
    """The CRD file's text."""
    header = "# Generated by `make crds` from operator/dspool/api.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the CRD files in the given directories."""
    parser = argparse.ArgumentParser(prog="python -m dspool.crdgen")
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    args = parser.parse_args(argv)
    text = render()
    stale = []
    for directory in args.directories:
        path = directory / CRD_FILE
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"stale CRD file(s): {', '.join(stale)}; run 'make crds' and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
