"""Read what ``dspool doctor`` checks from a live cluster (the checks themselves are in :mod:`dspool.doctor`).

Everything here is a read, plus SubjectAccessReviews (or SelfSubjectAccessReviews), which write nothing.
A read the caller may not make becomes a finding ("cannot list nodes: 403 Forbidden") instead of an error;
a cluster that cannot be reached at all raises, and the CLI prints one line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dspool import api
from dspool.crdgen import build_crd
from dspool.doctor import MONITORING_CRDS, AccessCheck, ClusterFacts
from dspool.inventory import DEFAULT_FABRIC_LABEL

LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
OPERATOR_POD_SELECTOR = "app.kubernetes.io/component=operator"
# What `dspool run` does (the chart's templates/rbac.yaml): (verb, group, resource, subresource, namespaced).
# Namespaced writes are asked in the namespace given to doctor (-n), or cluster-wide.
OPERATOR_ACCESS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("list", "", "nodes", "", False),
    ("watch", "", "nodes", "", False),
    ("list", "", "pods", "", False),
    ("watch", "", "pods", "", False),
    ("watch", api.GROUP, api.PLURAL, "", False),
    ("list", "policy", "poddisruptionbudgets", "", False),
    ("watch", "apps", "deployments", "", False),
    ("watch", "", "events", "", False),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", False),
    ("patch", api.GROUP, api.PLURAL, "status", True),
    ("update", api.GROUP, api.PLURAL, "finalizers", True),
    ("patch", "apps", "deployments", "", True),
    ("create", "apps", "statefulsets", "", True),
    ("delete", "apps", "deployments", "", True),
    ("patch", "", "services", "", True),
    ("patch", "", "configmaps", "", True),
    ("patch", "leaderworkerset.x-k8s.io", "leaderworkersets", "", True),
    ("create", "", "events", "", True),
)


def _reason(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "")
        return f"{error.status} {body.get('reason') or error.reason}"
    except ValueError:
        return f"{error.status} {error.reason}"


def _json(api_client: client.ApiClient, path: str, query: list[tuple[str, str]] | None = None) -> Any:
    response = api_client.call_api(
        path, "GET", query_params=query or [], auth_settings=["BearerToken"],
        header_params={"Accept": "application/json"}, _preload_content=False, _return_http_data_only=True,
        _request_timeout=30,
    )  # fmt: skip
    return json.loads(response.data)


def _crd(api_client: client.ApiClient, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = _json(api_client, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return found
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _access(api_client: client.ApiClient, service_account: tuple[str, str] | None, namespace: str) -> list[AccessCheck]:
    authorization = client.AuthorizationV1Api(api_client)
    checks = []
    for verb, group, resource, subresource, namespaced in OPERATOR_ACCESS:
        where = namespace if namespaced else ""
        attributes = client.V1ResourceAttributes(
            verb=verb, group=group, resource=resource, subresource=subresource or None, namespace=where or None
        )
        if service_account is not None:
            sa_namespace, sa_name = service_account
            review = authorization.create_subject_access_review(
                client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                    resource_attributes=attributes, user=f"system:serviceaccount:{sa_namespace}:{sa_name}",
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}", "system:authenticated"],
                ))
            )  # fmt: skip
        else:
            review = authorization.create_self_subject_access_review(
                client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=attributes
                ))
            )  # fmt: skip
        status = review.status
        checks.append(AccessCheck(verb, resource, group, where, subresource, bool(status.allowed),
                                  str(status.reason or "")))  # fmt: skip
    return checks


def probe(
    api_client: client.ApiClient,
    *,
    lease_name: str = "dspool-operator",
    lease_namespace: str | None = None,
    namespace: str = "",
    fabric_label: str = DEFAULT_FABRIC_LABEL,
    node_selector: dict[str, str] | None = None,
) -> ClusterFacts:
    """Read the facts :func:`dspool.doctor.diagnose` checks. ``namespace``: where the operator writes (its
    watchNamespaces), for the access checks; empty = cluster-wide. ``node_selector``: only these nodes."""
    unreadable: list[str] = []
    expected = build_crd()
    stored = _crd(api_client, expected["metadata"]["name"])
    lws = _crd(api_client, LWS_CRD) is not None
    monitoring = frozenset(name for name in MONITORING_CRDS if _crd(api_client, f"{name}.monitoring.coreos.com"))
    leases: list[dict[str, Any]] = []
    try:
        if lease_namespace:
            path = f"/apis/coordination.k8s.io/v1/namespaces/{lease_namespace}/leases"
        else:
            path = "/apis/coordination.k8s.io/v1/leases"
        leases = list(_json(api_client, path, [("fieldSelector", f"metadata.name={lease_name}")])["items"])
    except ApiException as error:
        unreadable.append(f"cannot list leases: {_reason(error)}")
    nodes: list[dict[str, Any]] = []
    try:
        selector = ",".join(f"{k}={v}" if v else k for k, v in (node_selector or {}).items())
        nodes = list(_json(api_client, "/api/v1/nodes", [("labelSelector", selector)] if selector else None)["items"])
    except ApiException as error:
        unreadable.append(f"cannot list nodes: {_reason(error)}")
    service_account: tuple[str, str] | None = None
    for lease in leases:
        lease_ns = lease["metadata"]["namespace"]
        try:
            pods = _json(api_client, f"/api/v1/namespaces/{lease_ns}/pods",
                         [("labelSelector", OPERATOR_POD_SELECTOR)])["items"]  # fmt: skip
        except ApiException:
            continue
        for pod in pods:
            account = (pod.get("spec") or {}).get("serviceAccountName")
            if account:
                service_account = (lease_ns, account)
                break
        if service_account:
            break
    access: list[AccessCheck] = []
    subject = "you (no operator pod found: the caller's own rights)"
    if service_account is not None:
        subject = f"ServiceAccount {service_account[0]}/{service_account[1]}"
    try:
        access = _access(api_client, service_account, namespace)
    except ApiException as error:
        unreadable.append(f"cannot create access reviews: {_reason(error)}")
    return ClusterFacts(
        now=datetime.now(UTC), stored_crd=stored, expected_crd=expected, leases=leases, lease_name=lease_name,
        lws_installed=lws, monitoring_crds=monitoring, nodes=nodes, access=access, access_subject=subject,
        fabric_label=fabric_label, unreadable=unreadable,
    )  # fmt: skip
