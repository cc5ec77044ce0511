"""Read the live pool from a cluster for the CLI (``dspool pool``, ``dspool plan --cluster``).

The operator keeps the same view in memory from watches (``dspool.kube.informer``); this one-shot reader
lists once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from dspool import api
from dspool.catalog import Catalog
from dspool.inventory import DEFAULT_FABRIC_LABEL, Pool, Reservation, build_pool, reservations_from_status
from dspool.kube import decode
from dspool.selectors import equality_selector, selector_selects
from dspool.views import compact_job, compact_node, compact_pdb, compact_pod
from dspool.weights.jobs import COMPONENT_LABEL, EVICT_COMPONENT, FETCH_COMPONENT


@dataclass
class ClusterView:
    """The pool and the DSDs of a cluster at one moment."""

    pool: Pool
    deployments: list[dict[str, Any]]
    reservations: list[Reservation]
    pods: list[dict[str, Any]]


def api_client_from(kubeconfig: str | None, context: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig path, $KUBECONFIG / ~/.kube/config, or the in-cluster account;
    ``context``: a context of that kubeconfig instead of its current one (kubectl's --context)."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    try:
        return config.new_client_from_config(context=context)
    except config.ConfigException:
        if context:
            raise
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise config.ConfigException(
                "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a pod"
            ) from None
        return client.ApiClient()


def read_cluster(
    api_client: client.ApiClient,
    catalog: Catalog,
    fabric_label: str = DEFAULT_FABRIC_LABEL,
    node_selector: dict[str, str] | None = None,
) -> ClusterView:
    """List nodes, pods and DSDs once and build the pool they describe."""
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    nodes = [compact_node(n) for n in list_raw(core.list_node, decode.NODES)]
    nodes = [n for n in nodes if selector_selects(equality_selector(node_selector or {}), n["metadata"]["labels"])]
    pods = [p for p in (compact_pod(pod) for pod in list_raw(core.list_pod_for_all_namespaces, decode.PODS)) if p]
    try:
        deployments = custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        deployments = []  # CRD not installed yet
    reservations: list[Reservation] = []
    for dsd in deployments:
        meta = dsd["metadata"]
        placements = api.placements_from_status(dsd.get("status"))
        reservations.extend(reservations_from_status(meta["namespace"], meta["name"], placements))
    pool = build_pool(nodes, pods, reservations, catalog, fabric_label)
    return ClusterView(pool=pool, deployments=deployments, reservations=reservations, pods=pods)


def list_raw(list_call: Any, decoder: decode.KindDecoder, page_size: int = 500) -> Iterator[dict[str, Any]]:
    """Every object of a kind, as its JSON decoded by ``decoder`` (the fields dspool reads), page by page.

    The kubernetes client's model classes would build every field of 5,000 nodes and their pods first.
    """
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": page_size, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        page = decoder.page(list_call(**kwargs).data)
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


def read_model_cache(api_client: client.ApiClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model cache's record (dspool's fetch and evict Jobs, compacted) and the nodes, listed once."""
    sanitize = api_client.sanitize_for_serialization
    selector = f"{COMPONENT_LABEL} in ({FETCH_COMPONENT},{EVICT_COMPONENT})"
    jobs = client.BatchV1Api(api_client).list_job_for_all_namespaces(label_selector=selector).items
    nodes = list_raw(client.CoreV1Api(api_client).list_node, decode.NODES)
    return [compact_job(sanitize(j)) for j in jobs], [compact_node(n) for n in nodes]


def read_pdbs(api_client: client.ApiClient) -> list[dict[str, Any]]:
    """Every PodDisruptionBudget, compacted as the operator's index keeps them."""
    items = client.PolicyV1Api(api_client).list_pod_disruption_budget_for_all_namespaces().items
    return [compact_pdb(api_client.sanitize_for_serialization(item)) for item in items]
