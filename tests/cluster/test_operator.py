"""The operator end to end on the local control plane: real API server, scheduler, GC, KWOK nodes.

Each test runs its own ``dspool run`` process, limited to the test's namespace and to the fake nodes of
the test's pool (``--node-selector dspool.io/pool=<unique>``), so tests never see each other's devices.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import OperatorOn, PoolOf, wait_for  # tests/cluster is on sys.path (rootdir-relative import)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dspool import api
from dspool.sim.fleet import PoolHandle

GROUP, VERSION, PLURAL = api.GROUP, api.VERSION, api.PLURAL
GPU = "nvidia.com/gpu"


def create_dsd(custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """kubectl apply of a DeepSeekDeployment."""
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_dsd(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    """The DSD as stored."""
    result: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return result


def wait_phase(
    custom: client.CustomObjectsApi, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    """Wait until the DSD reports ``phase`` and return it."""

    def reached() -> dict[str, Any] | None:
        dsd = get_dsd(custom, namespace, name)
        return dsd if (dsd.get("status") or {}).get("phase") == phase else None

    result: dict[str, Any] = wait_for(reached, timeout, f"DSD {namespace}/{name} to reach phase {phase}")
    return result


def placed_nodes(dsd: dict[str, Any]) -> list[list[tuple[str, int]]]:
    """Per replica, the (node, devices) it holds."""
    return [[(n["name"], n["devices"]) for n in p["nodes"]] for p in dsd["status"].get("placements", [])]


def assert_no_node_oversubscribed(core_v1: client.CoreV1Api, pool: PoolHandle) -> None:
    """Sum of device requests of all non-terminal pods on each node <= its allocatable."""
    for node_name in pool.node_names:
        node = core_v1.read_node(node_name)
        allocatable = {k: int(v) for k, v in (node.status.allocatable or {}).items() if "/" in k and v.isdigit()}
        pods = core_v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}").items
        for resource, limit in allocatable.items():
            requested = sum(
                int((c.resources.requests or {}).get(resource, 0))
                for pod in pods
                if pod.status.phase not in ("Succeeded", "Failed")
                for c in pod.spec.containers
            )
            assert requested <= limit, f"{node_name}: {requested} {resource} requested, {limit} allocatable"


def has_event(core_v1: client.CoreV1Api, namespace: str, name: str, reason: str, kind: str) -> bool:
    """Whether the DSD has an event with this reason and type."""
    events = core_v1.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return any(e.reason == reason and e.type == kind for e in events)


def pods_of(core_v1: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    """The serving pods of a DSD."""
    pods: list[client.V1Pod] = core_v1.list_namespaced_pod(
        namespace, label_selector=f"{api.DEPLOYMENT_LABEL}={name}"
    ).items
    return pods


def test_r1_lands_on_one_free_h200_node_and_becomes_ready(
    operator_on: OperatorOn,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, operator = operator_on("h200-h100", """
        - {name: h200, count: 1, accelerator: H200-141G}
        - {name: h100, count: 2, accelerator: H100-80G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", {"model": "deepseek-r1", "replicas": 1})
    dsd = wait_phase(custom, namespace, "r1", "Ready", 90)
    h200 = next(n for n in pool.node_names if "h200" in n)
    assert placed_nodes(dsd) == [[(h200, 8)]], operator.log_tail()
    placement = dsd["status"]["placements"][0]
    assert (placement["accelerator"], placement["precision"], placement["tensorParallel"]) == ("H200-141G", "fp8", 8)
    pods = pods_of(core_v1, namespace, "r1")
    assert [p.spec.node_name for p in pods] == [h200]  # kube-scheduler bound it where dspool planned
    assert dsd["status"]["endpoint"] == f"http://r1.{namespace}.svc:8000/v1"
    assert_no_node_oversubscribed(core_v1, pool)


def test_r1_without_h200_takes_two_h100_nodes_as_one_gang(
    operator_on: OperatorOn,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, _operator = operator_on("h100", """
        - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
        - {name: l20, count: 1, accelerator: L20-48G, labels: {dspool.io/fabric: eth-2}}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", {"model": "deepseek-r1", "replicas": 1,
                                         "placement": {"acceleratorTypes": ["H200-141G", "H100-80G"]}})  # fmt: skip
    dsd = wait_phase(custom, namespace, "r1", "Ready", 90)
    placement = dsd["status"]["placements"][0]
    h100s = sorted(n for n in pool.node_names if "h100" in n)
    assert sorted(n["name"] for n in placement["nodes"]) == h100s
    assert (placement["tensorParallel"], placement["pipelineParallel"]) == (8, 2)
    assert sorted(p.spec.node_name for p in pods_of(core_v1, namespace, "r1")) == h100s
    assert_no_node_oversubscribed(core_v1, pool)


def test_r1_unschedulable_with_a_reason_then_placed_when_a_node_arrives(
    operator_on: OperatorOn, pool_of: PoolOf,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, _operator = operator_on("one-h100", """
        - {name: h100, count: 1, accelerator: H100-80G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", {"model": "deepseek-r1", "replicas": 1,
                                         "placement": {"acceleratorTypes": ["H100-80G"]}})  # fmt: skip
    dsd = wait_phase(custom, namespace, "r1", "Unschedulable")
    scheduled = next(c for c in dsd["status"]["conditions"] if c["type"] == "Scheduled")
    assert scheduled["status"] == "False" and "H100-80G" in scheduled["message"] and "2 nodes" in scheduled["message"]
    wait_for(lambda: has_event(core_v1, namespace, "r1", "Unschedulable", "Warning"), 30, "an Unschedulable event")
    assert pods_of(core_v1, namespace, "r1") == []  # nothing half-placed

    # A second H100 node joins the same pool: the operator retries on the node event, not only on a timer.
    extra = pool_of("second-h100", """
        - {name: h100b, count: 1, accelerator: H100-80G}
    """)  # fmt: skip
    core_v1.patch_node(extra.node_names[0], {"metadata": {"labels": {"dspool.io/pool": pool.name}}})
    dsd = wait_phase(custom, namespace, "r1", "Ready", 90)
    assert sorted(n for n, _ in placed_nodes(dsd)[0]) == sorted(pool.node_names + extra.node_names)


def test_distills_binpack_and_small_models_leave_big_accelerators_free(
    operator_on: OperatorOn,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, operator = operator_on("mixed", """
        - {name: h200, count: 1, accelerator: H200-141G}
        - {name: rtx, count: 2, accelerator: RTX4090-24G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "small", {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 3})
    dsd = wait_phase(custom, namespace, "small", "Ready", 90)
    nodes = {node for replica in placed_nodes(dsd) for node, _ in replica}
    assert len(nodes) == 1 and "rtx" in next(iter(nodes))  # one 4090 node, packed; the H200 untouched
    create_dsd(custom, namespace, "mid", {"model": "deepseek-r1-distill-qwen-14b", "replicas": 1})
    dsd = wait_phase(custom, namespace, "mid", "Ready", 90)
    assert {node for node, _ in placed_nodes(dsd)[0]} == nodes  # fills the partly used node first
    h200 = next(n for n in pool.node_names if "h200" in n)
    assert core_v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={h200}").items == []
    assert_no_node_oversubscribed(core_v1, pool)

    # The operator exports what it decided: 3 + 2 of the 16 RTX 4090s reserved, the H200 untouched.
    def settled_metrics() -> str | None:
        text = operator.metrics()
        return text if 'state="reserved"} 5.0' in text else None

    metrics = wait_for(settled_metrics, 30, "metrics of the last pass")
    assert 'dspool_pool_devices{accelerator="RTX4090-24G",state="reserved"} 5.0' in metrics
    assert 'dspool_pool_devices{accelerator="H200-141G",state="free"} 8.0' in metrics
    assert f'dspool_deployment_replicas{{deployment="mid",namespace="{namespace}",state="ready"}} 1.0' in metrics
    assert "dspool_leader 1.0" in metrics


def test_scale_down_and_delete_free_the_devices(
    operator_on: OperatorOn,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, apps_v1: client.AppsV1Api, namespace: str,
) -> None:  # fmt: skip
    _pool, _operator = operator_on("l20", """
        - {name: l20, count: 2, accelerator: L20-48G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "d8b", {"model": "deepseek-r1-distill-llama-8b", "replicas": 3})
    wait_phase(custom, namespace, "d8b", "Ready", 90)
    assert len(apps_v1.list_namespaced_deployment(namespace).items) == 3
    # kubectl scale goes through the scale subresource
    custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "d8b", {"spec": {"replicas": 1}})
    wait_for(lambda: len(apps_v1.list_namespaced_deployment(namespace).items) == 1, 60, "scale down to 1 workload")
    dsd = wait_phase(custom, namespace, "d8b", "Ready")
    assert len(dsd["status"]["placements"]) == 1 and dsd["status"]["readyReplicas"] == 1
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "d8b")
    assert scale["status"]["replicas"] == 1
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "d8b")
    wait_for(lambda: pods_of(core_v1, namespace, "d8b") == [], 60, "the garbage collector to remove the pods")
    assert apps_v1.list_namespaced_deployment(namespace).items == []


def test_replica_on_a_lost_node_is_placed_again(
    operator_on: OperatorOn,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, _operator = operator_on("two-rtx", """
        - {name: rtx, count: 2, accelerator: RTX4090-24G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "d7b", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})
    dsd = wait_phase(custom, namespace, "d7b", "Ready", 90)
    first = placed_nodes(dsd)[0][0][0]
    core_v1.delete_node(first)

    def moved() -> str | None:
        status = get_dsd(custom, namespace, "d7b").get("status") or {}
        nodes = [n["name"] for p in status.get("placements", []) for n in p["nodes"]]
        return nodes[0] if nodes and first not in nodes and status.get("phase") == "Ready" else None

    second = wait_for(moved, 90, "the replica to be placed on the surviving node and become Ready")
    assert second in pool.node_names and second != first
    wait_for(lambda: has_event(core_v1, namespace, "d7b", "ReplicaLost", "Warning"), 30, "a ReplicaLost event")


def test_operator_restart_rebuilds_reservations_and_never_double_books(
    operator_on: OperatorOn,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, operator = operator_on("one-l20", """
        - {name: l20, count: 1, accelerator: L20-48G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "first", {"model": "deepseek-r1-distill-qwen-32b", "replicas": 3})  # 2 x L20 each
    first = wait_phase(custom, namespace, "first", "Ready", 90)  # 3 replicas x 2 L20 = 6 of the 8
    assert len(first["status"]["placements"]) == 3
    operator.stop(kill=True)  # crash
    create_dsd(custom, namespace, "second", {"model": "deepseek-r1-distill-llama-70b", "replicas": 1})  # 4 x L20
    operator.start()
    second = wait_phase(custom, namespace, "second", "Unschedulable", 60)  # needs 4, only 2 are free
    assert "L20-48G" in second["status"]["message"] and "2 free" in second["status"]["message"]
    again = get_dsd(custom, namespace, "first")
    assert placed_nodes(again) == placed_nodes(first)  # reservations survived the crash unchanged
    assert_no_node_oversubscribed(core_v1, pool)


def test_malformed_specs_are_rejected_at_apply(
    custom: client.CustomObjectsApi, namespace: str, crd_installed: None
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "deepseek-r1", "replicas": -1}, "replicas"),
        ({"model": "deepseek-r1", "precision": "int4"}, "precision"),
        ({"model": "deepseek-r1", "backend": "mindie", "placement": {"acceleratorTypes": ["H100-80G"]}}, "Ascend"),
        ({"model": "deepseek-r1", "precision": "fp8", "placement": {"acceleratorTypes": ["Ascend910B3"]}}, "FP8"),
        ({"model": "deepseek-r1", "modelSource": {"uri": "hf://deepseek-ai/DeepSeek-R1", "hostPath": {"path": "/d"}}},
         "exactly one"),
        ({"model": "deepseek-r1", "placement": {"strategy": "random"}}, "strategy"),
        ({"model": "deepseek-r1", "serving": {"env": [{"name": "X"}, {"name": "X", "value": "2"}]}}, "unique"),
        ({"model": "deepseek-r1", "serving": {"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "1"}}}},
         "requests.cpu must not exceed limits.cpu"),
        ({"model": "deepseek-r1", "serving": {"image": " engine image"}}, "serving.image"),
        ({"model": "deepseek-r1", "serving": {"env": [{"name": "T", "value": "x",
          "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}}, "value or valueFrom"),
        ({"model": "deepseek-r1", "serving": {"env": [{"name": "T", "valueFrom": {}}]}}, "exactly one of secretKeyRef"),
        ({"model": "deepseek-r1",
          "serving": {"envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]}},
         "exactly one of secretRef"),
        ({"model": "deepseek-r1", "backend": "mindie", "serving": {"kvCacheDtype": "fp8"}}, "no FP8 KV cache"),
        ({"model": "deepseek-r1", "backend": "mindie", "serving": {"speculativeDecoding": {}}}, "vLLM on NVIDIA"),
        ({"model": "deepseek-r1", "backend": "mindie", "serving": {"parallelism": "data-expert"}}, "not MindIE"),
    ]  # fmt: skip
    for index, (spec, expected) in enumerate(cases):
        with pytest.raises(ApiException) as raised:
            create_dsd(custom, namespace, f"bad-{index}", spec)
        assert raised.value.status == 422, spec
        assert expected in raised.value.body, raised.value.body


def kubectl_path() -> str:
    """The kubectl built with the local control plane (``e2e/cluster.py status`` prints it)."""
    status = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[2] / "e2e" / "cluster.py"), "status"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in status.stdout.splitlines():
        if line.startswith("kubectl: "):
            return line.split(": ", 1)[1].strip()
    pytest.skip("no local kubectl (tests run against an existing cluster)")


def test_kubectl_apply_rejects_a_malformed_example_and_accepts_the_real_ones(
    kubeconfig: str, namespace: str, crd_installed: None, tmp_path: Path
) -> None:
    kubectl = kubectl_path()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: dspool.io/v1alpha1\nkind: DeepSeekDeployment\nmetadata: {name: bad}\n"
        "spec: {model: deepseek-r1, replicas: -2, backend: mindie, placement: {acceleratorTypes: [H100-80G]}}\n"
    )
    run = [kubectl, "--kubeconfig", kubeconfig, "-n", namespace, "apply"]
    rejected = subprocess.run([*run, "-f", str(bad)], capture_output=True, text=True, check=False)
    assert rejected.returncode != 0
    assert "spec.replicas" in rejected.stderr and "greater than or equal to 0" in rejected.stderr
    examples = Path(__file__).resolve().parents[2] / "examples"
    accepted = subprocess.run([*run, "--dry-run=server", "-f", str(examples)], capture_output=True, text=True,
                              check=False)  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.count("created (server dry run)") == len(list(examples.glob("*.yaml")))


def test_a_clean_shutdown_exits_and_hands_the_lease_over_at_once(
    operator_on: OperatorOn, api_client: client.ApiClient, namespace: str
) -> None:
    pool, operator = operator_on("stop-l20", """
        - {name: l20, count: 1, accelerator: L20-48G}
    """)  # fmt: skip
    leases = client.CoordinationV1Api(api_client)

    def holder() -> str | None:
        try:
            spec = leases.read_namespaced_lease(f"dspool-{pool.name}", namespace).spec
        except ApiException:
            return None
        return spec.holder_identity if spec else None

    wait_for(holder, 30, "the operator to take its Lease")
    assert operator.process is not None
    operator.process.send_signal(signal.SIGTERM)  # a rolling upgrade, a node drain
    try:
        code = operator.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dspool run did not stop on SIGTERM (a watch or a write thread held it):\n{operator.log_tail()}")
    assert code == 0
    assert not holder()  # released: the next operator takes over without waiting for expiry
