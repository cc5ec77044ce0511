"""Workloads the cluster refuses (docs/observability.md, DspoolDeploymentStuck): a ResourceQuota on the real
API server keeps the ReplicaSet controller from creating a DSD's pods; the DSD says so and recovers."""

from __future__ import annotations

from typing import Any

from conftest import OperatorOn, wait_for
from kubernetes import client
from test_operator import create_dsd, get_dsd, has_event, pods_of, wait_phase


def _refused(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = (get_dsd(custom, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "WorkloadRefused"), None)


def test_a_resource_quota_refusing_the_pods_shows_on_the_dsd_and_lifting_it_recovers(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    _pool, operator = operator_on("quota", """
        - {name: l20, count: 1, accelerator: L20-48G}
    """)  # fmt: skip
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gpu-quota"),
        spec=client.V1ResourceQuotaSpec(hard={"requests.nvidia.com/gpu": "0"}),
    )
    core_v1.create_namespaced_resource_quota(namespace, quota)
    create_dsd(custom, namespace, "small", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})

    condition = wait_for(lambda: _refused(custom, namespace, "small"), 90, "the WorkloadRefused condition")
    assert condition["status"] == "True" and condition["reason"] == "QuotaExceeded", condition
    assert "exceeded quota: gpu-quota" in condition["message"] and "requests.nvidia.com/gpu" in condition["message"]
    dsd = get_dsd(custom, namespace, "small")
    assert dsd["status"]["phase"] == "Progressing", operator.log_tail()
    assert dsd["status"]["message"].startswith("the cluster refuses its pods (QuotaExceeded)")
    wait_for(
        lambda: has_event(core_v1, namespace, "small", "WorkloadRefused", "Warning"), 30, "a WorkloadRefused event"
    )
    assert pods_of(core_v1, namespace, "small") == []

    core_v1.delete_namespaced_resource_quota("gpu-quota", namespace)
    wait_phase(custom, namespace, "small", "Ready", 120)  # the ReplicaSet controller retries with a back-off
    assert _refused(custom, namespace, "small") is None


def test_an_admission_policy_refusing_a_gangs_pods_shows_on_the_dsd_through_statefulset_events(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
    api_client: client.ApiClient, lws_installed: None,
) -> None:  # fmt: skip
    """A multi-node replica (R1 on two H100 servers, a LeaderWorkerSet whose StatefulSets make the pods): the
    refusal is only in the StatefulSet controller's FailedCreate events (StatefulSets have no such condition)."""
    _pool, operator = operator_on("policy", """
        - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
    """)  # fmt: skip
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"no-gangs-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                                    "resources": ["pods"]}]},
            "validations": [{"expression": "!('dspool.io/deployment' in object.metadata.labels)",
                             "message": "site policy: no DeepSeek gangs in this namespace"}],
        },
    }  # fmt: skip
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
    }  # fmt: skip
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    try:
        # the policy takes effect once the API server has loaded it: a pod it must refuse proves it
        containers = [client.V1Container(name="c", image="pause")]
        probe = client.V1Pod(metadata=client.V1ObjectMeta(name="probe", labels={"dspool.io/deployment": "x"}),
                             spec=client.V1PodSpec(containers=containers))  # fmt: skip

        def policy_active() -> bool:
            try:
                core_v1.create_namespaced_pod(namespace, probe, dry_run="All")
            except client.exceptions.ApiException as error:
                return bool(error.status in (403, 422))
            return False

        wait_for(policy_active, 30, "the admission policy to be active")
        create_dsd(custom, namespace, "r1", {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H100-80G"]}})
        condition = wait_for(lambda: _refused(custom, namespace, "r1"), 120, "the WorkloadRefused condition")
        assert condition["reason"] == "AdmissionPolicyDenied", (condition, operator.log_tail())
        assert condition["message"].startswith("StatefulSet r1-0")
        assert "site policy: no DeepSeek gangs in this namespace" in condition["message"]
        wait_for(
            lambda: has_event(core_v1, namespace, "r1", "WorkloadRefused", "Warning"), 30, "a WorkloadRefused event"
        )
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)
