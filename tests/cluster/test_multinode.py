"""Multi-node replicas on the real LeaderWorkerSet controller, and MindIE rank tables written by dspool.

The local control plane runs LWS v0.7.0 (built from its module, webhooks on loopback; see e2e/cluster.py),
so a LeaderWorkerSet dspool builds is turned into leader and worker pods by LWS itself.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import OperatorOn, lws, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_operator import (
    assert_no_node_oversubscribed,
    create_dsd,
    get_dsd,
    has_event,
    placed_nodes,
    pods_of,
    wait_phase,
)

from dspool import api
from dspool.sim.fleet import PoolHandle
from dspool.workloads.mindie import ASCEND_DEVICE_ANNOTATION, MINDCLUSTER_CRD, RANK_TABLE_KEY

LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
R1_ON_H100 = {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H100-80G"]}}


def lws_objects(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = custom.list_namespaced_custom_object(LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL)[
        "items"
    ]
    return items


def node_of_worker(pods: list[client.V1Pod], index: str) -> str:
    [pod] = [p for p in pods if (p.metadata.labels or {}).get(WORKER_INDEX) == index]
    return str(pod.spec.node_name)


def test_r1_on_two_h100_is_one_leaderworkerset_whose_pods_land_on_the_planned_nodes(
    operator_on: OperatorOn, lws_installed: None,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, operator = operator_on("lws", """
        - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", R1_ON_H100)
    dsd = wait_phase(custom, namespace, "r1", "Ready", 120)
    [lws] = lws_objects(custom, namespace)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    planned = [name for name, _ in placed_nodes(dsd)[0]]
    pods = pods_of(core_v1, namespace, "r1")
    assert len(pods) == 2, operator.log_tail()
    assert [node_of_worker(pods, "0"), node_of_worker(pods, "1")] == planned  # leader on the first stage's node
    # LWS's pod webhook ran: every pod knows its leader and group size.
    for pod in pods:
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env["LWS_GROUP_SIZE"] == "2" and env["LWS_LEADER_ADDRESS"].startswith("r1-0")
    assert_no_node_oversubscribed(core_v1, pool)


def test_losing_a_worker_node_recreates_the_group_on_other_nodes_without_double_booking(
    operator_on: OperatorOn, lws_installed: None,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, _operator = operator_on("lws-loss", """
        - {name: h100, count: 4, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", R1_ON_H100)
    first = [name for name, _ in placed_nodes(wait_phase(custom, namespace, "r1", "Ready", 120))[0]]
    worker_node = node_of_worker(pods_of(core_v1, namespace, "r1"), "1")
    core_v1.delete_node(worker_node)
    wait_for(lambda: has_event(core_v1, namespace, "r1", "ReplicaLost", "Warning"), 90, "a ReplicaLost event")

    def regrouped() -> list[str] | None:
        dsd = get_dsd(custom, namespace, "r1")
        nodes = [name for name, _ in placed_nodes(dsd)[0]] if dsd["status"].get("placements") else []
        if not nodes or worker_node in nodes or dsd["status"].get("phase") != "Ready":
            return None
        pods = pods_of(core_v1, namespace, "r1")
        ok = len(pods) == 2 and sorted(p.spec.node_name for p in pods) == sorted(nodes)
        return nodes if ok else None

    second = wait_for(regrouped, 180, "the group to be re-placed and Ready on surviving nodes")
    assert second != first and worker_node not in second
    assert len(lws_objects(custom, namespace)) == 1
    assert_no_node_oversubscribed(core_v1, PoolHandle(pool.name, [n for n in pool.node_names if n != worker_node]))


def test_deleting_the_dsd_removes_the_group(
    operator_on: OperatorOn, lws_installed: None,
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    operator_on("lws-delete", """
        - {name: h100, count: 2, accelerator: H100-80G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", R1_ON_H100)
    wait_phase(custom, namespace, "r1", "Ready", 120)
    custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "r1")
    wait_for(lambda: not lws_objects(custom, namespace), 60, "the LeaderWorkerSet to be garbage-collected")
    wait_for(lambda: pods_of(core_v1, namespace, "r1") == [], 90, "the group's pods to be gone")


@pytest.mark.serial  # removing LWS's CRD deletes every LeaderWorkerSet in the cluster, other tests' too
def test_lws_removed_and_installed_while_the_operator_runs_is_picked_up_without_a_restart(
    operator_on: OperatorOn, lws_installed: None,
    custom: client.CustomObjectsApi, apps_v1: client.AppsV1Api, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    _pool, operator = operator_on("lws-toggle", """
        - {name: h100, count: 2, accelerator: H100-80G}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1", R1_ON_H100)
    wait_phase(custom, namespace, "r1", "Ready", 120)
    assert len(lws_objects(custom, namespace)) == 1

    lws("remove")

    def own_statefulsets() -> bool:
        sets = apps_v1.list_namespaced_stateful_set(namespace, label_selector=f"{api.DEPLOYMENT_LABEL}=r1").items
        owners = {ref.kind for s in sets for ref in s.metadata.owner_references or []}
        ready = get_dsd(custom, namespace, "r1")["status"].get("phase") == "Ready"
        return len(sets) == 2 and owners == {api.KIND} and ready and len(pods_of(core_v1, namespace, "r1")) == 2

    wait_for(own_statefulsets, 180, "dspool's own StatefulSets to serve R1 once LWS is gone")
    assert "removed" in operator.log_path.read_text()

    lws("install")

    def back_on_lws() -> bool:
        sets = apps_v1.list_namespaced_stateful_set(namespace, label_selector=f"{api.DEPLOYMENT_LABEL}=r1").items
        dspool_sets = [s for s in sets if any(r.kind == api.KIND for r in s.metadata.owner_references or [])]
        ready = get_dsd(custom, namespace, "r1")["status"].get("phase") == "Ready"
        return len(lws_objects(custom, namespace)) == 1 and not dspool_sets and ready

    wait_for(back_on_lws, 180, "R1 to run as a LeaderWorkerSet again once LWS is back")


# ------------------------------------------------------------------------------------------- MindIE


def annotate_like_the_device_plugin(core_v1: client.CoreV1Api, pod: client.V1Pod, host: int) -> None:
    """What the Ascend device plugin writes on a pod it gave 8 NPUs (device IPs from /etc/hccn.conf)."""
    devices = [{"device_id": str(i), "device_ip": f"192.168.{host}.{100 + i}"} for i in range(8)]
    value = {"pod_name": pod.metadata.name, "server_id": pod.metadata.uid, "host_ip": f"10.0.0.{host}",
             "devices": devices}  # fmt: skip
    core_v1.patch_namespaced_pod(
        pod.metadata.name,
        pod.metadata.namespace,
        {"metadata": {"annotations": {ASCEND_DEVICE_ANNOTATION: json.dumps(value)}}},
    )


def rank_table(core_v1: client.CoreV1Api, namespace: str) -> dict[str, Any] | None:
    try:
        config_map = core_v1.read_namespaced_config_map("rings-config-r1a-0", namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    table: dict[str, Any] = json.loads(config_map.data[RANK_TABLE_KEY])
    return table


def start_script_wait_ends(core_v1: client.CoreV1Api, namespace: str, table: dict[str, Any], tmp: Path) -> bool:
    """Run the rank-table wait of the pod's real start script (from its ConfigMap) against ``table``."""
    script = core_v1.read_namespaced_config_map("r1a-0-mindie", namespace).data["start.sh"]
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if "waiting for a completed rank table" in line)
    wait = "\n".join(lines[start : start + 2])  # the echo and the until loop
    (tmp / "hccl.json").write_text(json.dumps(table))
    done = subprocess.run(["timeout", "8", "bash", "-c", wait], env={"RANK_TABLE_FILE": str(tmp / "hccl.json"),
                          "PATH": "/usr/bin:/bin"}, capture_output=True)  # fmt: skip
    return done.returncode == 0


def test_dspool_writes_the_mindie_rank_table_from_the_device_plugins_annotations(
    operator_on: OperatorOn, custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
    tmp_path: Path, api_client: client.ApiClient,
) -> None:  # fmt: skip
    operator_on("atlas", """
        - {name: atlas, count: 2, accelerator: Ascend910B3, labels: {dspool.io/fabric: roce-1}}
    """)  # fmt: skip
    create_dsd(custom, namespace, "r1a", {"model": "deepseek-r1", "precision": "w8a8", "backend": "mindie"})
    wait_phase(custom, namespace, "r1a", "Ready", 120)
    pending = wait_for(lambda: rank_table(core_v1, namespace), 60, "the rank-table ConfigMap")
    assert pending == {"status": "initializing"}  # no pod carries its NPUs yet
    assert not start_script_wait_ends(core_v1, namespace, pending, tmp_path)  # the pods keep waiting

    pods = sorted(
        pods_of(core_v1, namespace, "r1a"), key=lambda p: (p.metadata.labels or {})["dspool.io/role"] != "leader"
    )
    for host, pod in enumerate(pods, start=1):
        annotate_like_the_device_plugin(core_v1, pod, host)

    def completed() -> dict[str, Any] | None:
        table = rank_table(core_v1, namespace)
        return table if table and table.get("status") == "completed" else None

    table = wait_for(completed, 60, "a completed rank table")
    assert table["server_count"] == "2"
    leader, worker = table["server_list"]
    assert (leader["server_id"], leader["container_ip"]) == ("10.0.0.1", pods[0].status.pod_ip)  # the master first
    assert [d["rank_id"] for d in leader["device"] + worker["device"]] == [str(i) for i in range(16)]
    assert worker["device"][7]["device_ip"] == "192.168.2.107"
    assert start_script_wait_ends(core_v1, namespace, table, tmp_path)  # the start script proceeds

    # The worker pod is replaced (its node's NPUs re-allocated): dspool rewrites the table.
    core_v1.delete_namespaced_pod(pods[1].metadata.name, namespace, grace_period_seconds=0)

    def replacement() -> client.V1Pod | None:
        fresh = [p for p in pods_of(core_v1, namespace, "r1a") if p.metadata.uid != pods[1].metadata.uid
                 and p.metadata.name == pods[1].metadata.name and p.status.pod_ip]  # fmt: skip
        return fresh[0] if fresh else None

    annotate_like_the_device_plugin(core_v1, wait_for(replacement, 60, "the worker pod to be recreated"), 3)
    rewritten = wait_for(
        lambda: (t := completed()) and t["server_list"][1]["server_id"] == "10.0.0.3" and t, 60, "the rewritten table"
    )
    assert rewritten["server_list"][1]["device"][0]["device_ip"] == "192.168.3.100"

    # With MindCluster's ascend-operator installed, dspool leaves the rank table to it.
    ext = client.ApiextensionsV1Api(api_client)
    ext.create_custom_resource_definition(_ascend_job_crd())
    try:
        wait_for(lambda: rank_table(core_v1, namespace) is None, 60, "dspool to stop writing the rank table")
    finally:
        ext.delete_custom_resource_definition(MINDCLUSTER_CRD)


def _ascend_job_crd() -> dict[str, Any]:
    """A stand-in for MindCluster's AscendJob CRD (only its presence matters to dspool)."""
    return yaml_load(f"""
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {{name: {MINDCLUSTER_CRD}}}
        spec:
          group: mindxdl.gitee.com
          scope: Namespaced
          names: {{kind: AscendJob, plural: ascendjobs, singular: ascendjob, shortNames: [acjob]}}
          versions:
            - name: v1
              served: true
              storage: true
              schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
    """)


def yaml_load(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(textwrap.dedent(text))
    return loaded
