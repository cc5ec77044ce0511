"""Apply the chart's CRDs on ``helm install`` and ``helm upgrade``: the chart's pre-install/pre-upgrade hook.

Helm installs ``crds/`` once and never upgrades it ("There is no support at this time for upgrading or
deleting CRDs using Helm", Helm's chart best practices), so a new chart version with a changed
DeepSeekDeployment schema would otherwise leave the old CRD in place. Like the GPU Operator's chart (a
pre-upgrade hook Job applying its CRDs), dspool's chart runs a Job before the release's objects change:

    python -m dspool.crd_upgrade /etc/dspool/crds

with dspool's own image (no kubectl to download) and the chart's ``crds/*.yaml`` mounted from a ConfigMap.
Each CustomResourceDefinition in the directory is server-side applied (field manager ``dspool-crd-upgrade``,
forcing ownership of the fields helm created) and waited for until Established. Only CRDs of the
``dspool.io`` group are accepted: the hook's RBAC allows those names only, and a stray file fails with a
reason instead of a 403. Any failure prints one line naming the CRD and the API server's reason and exits 1,
which fails the ``helm upgrade`` before the new operator starts against an old schema.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dspool import api

FIELD_MANAGER = "dspool-crd-upgrade"
ESTABLISHED_TIMEOUT_SECONDS = 60.0


class CrdUpgradeError(Exception):
    """A CRD could not be applied; the message says which and why."""


def crds_in(directory: Path) -> Iterator[dict[str, Any]]:
    """Every CustomResourceDefinition of the YAML files in ``directory`` (sorted by file name)."""
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise CrdUpgradeError(f"no *.yaml files in {directory}: mount the chart's crds/ there")
    for path in paths:
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            if document.get("kind") != "CustomResourceDefinition":
                raise CrdUpgradeError(f"{path.name}: a {document.get('kind')!r}, not a CustomResourceDefinition")
            group = (document.get("spec") or {}).get("group")
            if group != api.GROUP:
                raise CrdUpgradeError(
                    f"{path.name}: CRD {document['metadata']['name']} is of group {group!r}; this hook applies "
                    f"only {api.GROUP} CRDs (its RBAC allows no others)"
                )
            yield document


def _reason(error: Any) -> str:
    try:
        body = json.loads(error.body)
        return f"{error.status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    except (TypeError, ValueError, AttributeError):
        return f"{getattr(error, 'status', '?')} {getattr(error, 'reason', error)}"


def apply_crd(api_client: Any, crd: dict[str, Any], timeout: float = ESTABLISHED_TIMEOUT_SECONDS) -> str:
    """Server-side apply one CRD and wait until it is Established; returns what changed (for the log)."""
    from kubernetes.client.exceptions import ApiException

    name = crd["metadata"]["name"]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    versions = ",".join(v["name"] for v in crd["spec"]["versions"])
    try:
        before = api_client.call_api(
            path, "GET", auth_settings=["BearerToken"], header_params={"Accept": "application/json"},
            _preload_content=False, _return_http_data_only=True, _request_timeout=30,
        )  # fmt: skip
        stored = json.loads(before.data)
    except ApiException as error:
        if error.status != 404:
            raise CrdUpgradeError(f"reading CRD {name} failed: {_reason(error)}") from None
        stored = None
    try:
        response = api_client.call_api(
            path, "PATCH", query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=crd,
            auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/apply-patch+yaml"},
            _preload_content=False, _return_http_data_only=True, _request_timeout=30,
        )  # fmt: skip
    except ApiException as error:
        raise CrdUpgradeError(f"applying CRD {name} failed: {_reason(error)}") from None
    applied = json.loads(response.data)
    deadline = time.monotonic() + timeout
    while True:
        conditions = (applied.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            break
        if time.monotonic() > deadline:
            raise CrdUpgradeError(f"CRD {name} was applied but not Established within {timeout:.0f}s")
        time.sleep(0.5)
        applied = json.loads(
            api_client.call_api(
                path, "GET", auth_settings=["BearerToken"], header_params={"Accept": "application/json"},
                _preload_content=False, _return_http_data_only=True, _request_timeout=30,
            ).data
        )  # fmt: skip
    if stored is None:
        return f"created {name} (versions {versions})"
    same = stored.get("metadata", {}).get("generation") == applied.get("metadata", {}).get("generation")
    return f"{'unchanged' if same else 'updated'} {name} (versions {versions})"


def main(argv: list[str] | None = None) -> int:
    """Apply every dspool CRD in a directory (the hook Job's command)."""
    parser = argparse.ArgumentParser(prog="python -m dspool.crd_upgrade", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="directory of CRD manifests (the chart's crds/)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    args = parser.parse_args(argv)
    from kubernetes import client, config

    try:
        crds = list(crds_in(args.directory))
        if args.kubeconfig:
            config.load_kube_config(config_file=args.kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        with client.ApiClient() as api_client:
            for crd in crds:
                print(apply_crd(api_client, crd), flush=True)
    except (CrdUpgradeError, config.ConfigException, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # network errors and the like: one line, no traceback
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
