"""Proof that the local control plane is a real one: scheduler, controllers, GC and API validation."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dspool.catalog import load_catalog
from dspool.sim.fleet import POOL_LABEL, PoolHandle

# Fake nodes never pull images; on kind (e2e/kind) the pause image is already on every node.
TEST_IMAGE = os.environ.get("DSPOOL_TEST_IMAGE", "registry.k8s.io/pause:3.10")
GPU = "nvidia.com/gpu"
GPU_TOLERATION = client.V1Toleration(key=GPU, operator="Exists", effect="NoSchedule")


def pod_spec(pool: PoolHandle, gpus: int = 0, node_labels: dict[str, str] | None = None) -> client.V1PodSpec:
    """A one-container pod spec pinned to a pool (and optionally to nodes with given labels)."""
    match = [client.V1NodeSelectorRequirement(key=POOL_LABEL, operator="In", values=[pool.name])]
    match += [
        client.V1NodeSelectorRequirement(key=key, operator="In", values=[value])
        for key, value in (node_labels or {}).items()
    ]
    affinity = client.V1Affinity(
        node_affinity=client.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
                node_selector_terms=[client.V1NodeSelectorTerm(match_expressions=match)]
            )
        )
    )
    resources = client.V1ResourceRequirements(limits={GPU: str(gpus)}) if gpus else None
    return client.V1PodSpec(
        containers=[client.V1Container(name="main", image=TEST_IMAGE, resources=resources)],
        affinity=affinity,
        tolerations=[GPU_TOLERATION],
        termination_grace_period_seconds=0,
    )


def test_gpu_deployment_is_scheduled_on_the_h200_node_and_becomes_ready(
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    fake_pool: Callable[[str], PoolHandle],
    wait_for: Callable[..., Any],
) -> None:
    pool = fake_pool("small.yaml")
    h200 = load_catalog().accelerator("H200-141G")
    assert h200.gfd_product is not None
    product_label = {"nvidia.com/gpu.product": h200.gfd_product}
    labels = {"app": "h200-serving"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="h200-serving"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=pod_spec(pool, gpus=8, node_labels=product_label),
            ),
        ),
    )
    apps_v1.create_namespaced_deployment(namespace, deployment)

    wait_for(
        lambda: (apps_v1.read_namespaced_deployment_status("h200-serving", namespace).status.ready_replicas or 0) == 1,
        60,
        "deployment h200-serving to have 1 ready replica",
    )
    (pod,) = core_v1.list_namespaced_pod(namespace, label_selector="app=h200-serving").items
    node = core_v1.read_node(pod.spec.node_name)
    assert pod.spec.node_name in pool.node_names
    assert node.metadata.labels["nvidia.com/gpu.product"] == h200.gfd_product
    assert node.status.allocatable[GPU] == "8"
    assert pod.status.phase == "Running"


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    core_v1: client.CoreV1Api,
    namespace: str,
    fake_pool: Callable[[str], PoolHandle],
    wait_for: Callable[..., Any],
) -> None:
    pool = fake_pool("small.yaml")
    most_gpus = max(int(n.status.allocatable.get(GPU, "0")) for n in core_v1.list_node().items)
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="too-big"), spec=pod_spec(pool, gpus=most_gpus + 1))
    core_v1.create_namespaced_pod(namespace, pod)

    def failed_scheduling_event() -> client.CoreV1Event | None:
        events = core_v1.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
        return next((e for e in events if e.reason == "FailedScheduling"), None)

    event = wait_for(failed_scheduling_event, 30, "a FailedScheduling event for pod too-big")
    assert f"Insufficient {GPU}" in event.message
    pending = core_v1.read_namespaced_pod("too-big", namespace)
    assert pending.status.phase == "Pending"
    assert pending.spec.node_name is None


def test_pods_are_garbage_collected_when_their_replicaset_is_deleted(
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    fake_pool: Callable[[str], PoolHandle],
    wait_for: Callable[..., Any],
) -> None:
    pool = fake_pool("small.yaml")
    labels = {"app": "gc-probe"}
    replica_set = client.V1ReplicaSet(
        metadata=client.V1ObjectMeta(name="gc-probe"),
        spec=client.V1ReplicaSetSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod_spec(pool)),
        ),
    )
    apps_v1.create_namespaced_replica_set(namespace, replica_set)

    def running_pods() -> list[client.V1Pod]:
        pods = core_v1.list_namespaced_pod(namespace, label_selector="app=gc-probe").items
        return pods if len(pods) == 3 and all(p.status.phase == "Running" for p in pods) else []

    pods = wait_for(running_pods, 60, "3 running pods of replicaset gc-probe")
    assert all(p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods)

    apps_v1.delete_namespaced_replica_set(
        "gc-probe", namespace, body=client.V1DeleteOptions(propagation_policy="Background")
    )
    wait_for(
        lambda: not core_v1.list_namespaced_pod(namespace, label_selector="app=gc-probe").items,
        60,
        "the garbage collector to delete the pods of the deleted replicaset gc-probe",
    )


@pytest.fixture
def gadget_crd(api_client: client.ApiClient, wait_for: Callable[..., Any]) -> Any:
    """A throw-away namespaced CRD whose schema requires spec.replicas >= 0."""
    extensions = client.ApiextensionsV1Api(api_client)
    suffix = uuid.uuid4().hex[:8]
    group, plural, kind = "e2e.dspool.io", f"gadgets{suffix}", f"Gadget{suffix}"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"replicas": {"type": "integer", "minimum": 0}},
            }
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": f"gadget{suffix}", "kind": kind},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }
    extensions.create_custom_resource_definition(crd)

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(f"{plural}.{group}").status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, 30, f"CRD {plural}.{group} to be Established")
    yield group, plural, kind
    extensions.delete_custom_resource_definition(f"{plural}.{group}")


def test_api_server_rejects_an_object_that_violates_the_crd_schema(
    api_client: client.ApiClient, namespace: str, gadget_crd: tuple[str, str, str], wait_for: Callable[..., Any]
) -> None:
    group, plural, kind = gadget_crd
    custom = client.CustomObjectsApi(api_client)
    invalid = {
        "apiVersion": f"{group}/v1",
        "kind": kind,
        "metadata": {"name": "negative"},
        "spec": {"replicas": -1},
    }

    def rejection() -> ApiException | None:
        try:
            custom.create_namespaced_custom_object(group, "v1", namespace, plural, invalid)
        except ApiException as error:
            if error.status == 404:  # the new resource is not served yet
                return None
            return error
        pytest.fail("the API server accepted spec.replicas=-1")

    error = wait_for(rejection, 30, f"the API server to serve {plural}.{group}")
    assert error.status == 422
    assert "spec.replicas" in error.body
    assert "greater than or equal to 0" in error.body
