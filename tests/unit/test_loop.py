"""The pass (dspool.loop) with a fake writer: write order, overlapping writes, safety when writes fail,
the fence, and passes in a row against a simulated cluster that echoes what was written."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from dspool import api
from dspool.api import ReplicaPlacement
from dspool.catalog import Precision, builtin_catalog
from dspool.kube.writer import ApiWriter
from dspool.ledger import NotLeadingError, WriteLedger, digest, object_key
from dspool.loop import PassRunner, Snapshot
from dspool.metrics import OperatorMetrics
from dspool.reconcile import Event, ReconcileSettings
from dspool.settings import OperatorSettings
from dspool.sim.fleet import NodeGroup, PoolFile, node_manifests
from dspool.weights.entries import entry_for
from dspool.weights.jobs import FetchSettings, WantedEntry, fetch_job

CATALOG = builtin_catalog()
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SMALL = "deepseek-r1-distill-qwen-1.5b"


def nodes(count: int, accelerator: str = "L20-48G") -> list[dict[str, Any]]:
    fleet = PoolFile(name="t", groups=[NodeGroup(name="n", count=count, accelerator=accelerator)])
    manifests = node_manifests(fleet, CATALOG)
    for node in manifests:
        node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    return manifests


def dsd(name: str, replicas: int = 1, model: str = SMALL, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "dspool.io/v1alpha1",
        "kind": "DeepSeekDeployment",
        "metadata": {"name": name, "namespace": "ai", "uid": f"uid-{name}", "generation": 1,
                     "creationTimestamp": f"2026-12-02T10:00:{len(name):02d}Z"},
        "spec": {"model": model, "replicas": replicas},
        "status": status or {},
    }  # fmt: skip


class FakeWriter:
    """Records writes; ``fail_status`` names DSDs whose status write fails; counts writes in flight."""

    def __init__(self, fail_status: Sequence[str] = (), call_seconds: float = 0.0, lose_lease_after: int = -1):
        self.ledger = WriteLedger()
        self.fail_status = set(fail_status)
        self.call_seconds = call_seconds
        self.lose_lease_after = lose_lease_after
        self.log: list[tuple[str, str]] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, name) -> the object last applied
        self.annotated: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        self._gate = threading.Event()

    def _call(self, what: str, name: str) -> None:
        with self._lock:
            if 0 <= self.lose_lease_after <= len(self.log):
                raise NotLeadingError(f"not leading: refusing to {what} {name}")
            self.log.append((what, name))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        self._gate.wait(self.call_seconds)  # a slow API server: lets other writes start meanwhile
        with self._lock:
            self._in_flight -= 1

    def write_status(self, namespace: str, name: str, status: dict[str, Any], old: Mapping[str, Any]) -> None:
        if name in self.fail_status:
            raise RuntimeError("500 Internal Server Error")
        self._call("status", name)
        self.statuses[name] = status

    def apply_object(self, uid: str, namespace: str, obj: dict[str, Any]) -> None:
        label = obj["metadata"]["labels"].get("dspool.io/deployment", "?")
        self._call(f"apply {obj['kind']}", label)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        self.ledger.record_applied(object_key(namespace, obj), digest(obj))
        self.ledger.record_owned(uid, namespace, label, (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]))

    def delete_stale(self, uid: str, namespace: str, name: str, objects: Sequence[dict[str, Any]]) -> None:
        self._call("delete stale", name)
        wanted = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in objects}
        for _, kind, object_name in sorted(self.ledger.swap_wanted(uid, namespace, name, wanted)):
            self.deleted.append(f"{kind}/{object_name}")

    def post_events(self, metadata: Mapping[str, Any], events: Sequence[Event]) -> None:
        self._call("events", metadata["name"])

    def delete_object(self, namespace: str, api_version: str, kind: str, name: str) -> None:
        self._call(f"delete {kind}", name)
        self.deleted.append(f"{kind}/{name}")

    def annotate(self, namespace: str, api_version: str, kind: str, name: str, annotations: dict[str, str]) -> None:
        self._call(f"annotate {kind}", name)
        self.annotated[name] = annotations


def runner(writer: FakeWriter, **settings: Any) -> PassRunner:
    return PassRunner(
        OperatorSettings(metrics_port=0, **settings), CATALOG, writer, OperatorMetrics(), now=lambda: NOW,
        sleep=lambda seconds: None,
    )  # fmt: skip


def booked_devices(statuses: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Devices every stored status books, per node."""
    per_node: dict[str, int] = {}
    for status in statuses.values():
        for placement in status.get("placements") or []:
            for node in ReplicaPlacement.model_validate(placement).nodes:
                per_node[node.name] = per_node.get(node.name, 0) + node.devices
    return per_node


def test_each_dsd_gets_its_status_before_its_objects_and_events() -> None:
    writer = FakeWriter()
    pass_runner = runner(writer)
    pass_runner.run_pass(Snapshot(nodes(2), [], [dsd("a"), dsd("b")]), ReconcileSettings())
    pass_runner.drain()
    for name in ("a", "b"):
        order = [what for what, who in writer.log if who == name]
        assert order[0] == "status"
        assert {"apply Deployment", "apply Service", "events"} <= set(order[1:])
    # Stale objects are looked for once none of the DSD's objects is being written (the next pass here).
    stored = [dsd(name, status=writer.statuses[name]) for name in ("a", "b")]
    pass_runner.run_pass(Snapshot(nodes(2), [], stored), ReconcileSettings())
    pass_runner.drain()
    assert {who for what, who in writer.log if what == "delete stale"} == {"a", "b"}


def test_writes_of_different_dsds_overlap_up_to_the_concurrency_limit_of_each_kind() -> None:
    writer = FakeWriter(call_seconds=0.05)
    pass_runner = runner(writer, write_concurrency=4)
    pass_runner.run_pass(Snapshot(nodes(4), [], [dsd(f"d{i}") for i in range(12)]), ReconcileSettings())
    pass_runner.drain()
    assert 4 < writer.max_in_flight <= 10  # up to 4 statuses, 4 workload writes and 2 other writes at once
    assert sum(1 for what, _ in writer.log if what == "status") == 12
    assert all(count <= 8 for count in booked_devices(writer.statuses).values())  # L20 nodes hold 8 devices


def test_a_failed_status_write_writes_nothing_else_for_that_dsd_and_is_retried_next_pass() -> None:
    writer = FakeWriter(fail_status=["a"])
    pass_runner = runner(writer)
    outcome = pass_runner.run_pass(Snapshot(nodes(1), [], [dsd("a"), dsd("b")]), ReconcileSettings())
    pass_runner.drain()
    assert outcome.failed == ["ai/a"]
    assert [who for _, who in writer.log if who == "a"] == []
    writer.fail_status.clear()
    stored_b = dsd("b", status=writer.statuses["b"])
    pass_runner.run_pass(Snapshot(nodes(1), [], [dsd("a"), stored_b]), ReconcileSettings())
    assert "a" in writer.statuses and writer.statuses["a"]["placements"]


def test_devices_a_dsd_gives_back_go_to_another_only_once_the_release_is_stored() -> None:
    # "big" holds all 8 devices of the only node and is scaled to 0; "next" waits for a device.
    first = FakeWriter()
    runner(first).run_pass(Snapshot(nodes(1), [], [dsd("big", replicas=8)]), ReconcileSettings())
    stored = first.statuses["big"]
    assert booked_devices(first.statuses) == {"n-000": 8}

    failing = FakeWriter(fail_status=["big"])
    outcome = runner(failing).run_pass(
        Snapshot(nodes(1), [], [dsd("big", replicas=0, status=stored), dsd("next")]), ReconcileSettings()
    )
    assert outcome.failed == ["ai/big"] and outcome.barriers >= 1
    assert not failing.statuses.get("next", {}).get("placements")  # the release was not stored: no booking
    assert booked_devices({"big": stored, **failing.statuses})["n-000"] <= 8

    storing = FakeWriter()
    runner(storing).run_pass(
        Snapshot(nodes(1), [], [dsd("big", replicas=0, status=stored), dsd("next")]), ReconcileSettings()
    )
    assert storing.statuses["big"]["placements"] == []
    assert len(storing.statuses["next"]["placements"]) == 1  # stored release: the device is free for it


def test_losing_the_lease_mid_pass_stops_every_write_after_it() -> None:
    writer = FakeWriter(lose_lease_after=3)
    with pytest.raises(NotLeadingError):
        runner(writer, write_concurrency=1).run_pass(
            Snapshot(nodes(2), [], [dsd(f"d{i}") for i in range(6)]), ReconcileSettings()
        )
    assert len(writer.log) == 3


def test_passes_in_a_row_never_book_a_device_twice_while_the_watch_lags() -> None:
    # The watch never echoes the statuses: every pass sees the stored status of the pass before the last.
    writer = FakeWriter()
    pass_runner = runner(writer)
    stored: dict[str, dict[str, Any]] = {}
    wanted = {"a": 3, "b": 5, "c": 2}
    for round_ in range(6):
        bodies = [dsd(name, replicas=count, status=stored.get(name)) for name, count in wanted.items()]
        pass_runner.run_pass(Snapshot(nodes(1), [], bodies), ReconcileSettings())
        assert sum(booked_devices(writer.statuses).values()) <= 8
        if round_ % 2:
            stored = {name: dict(status) for name, status in writer.statuses.items()}  # the watch catches up
        wanted = {"a": 1, "b": 7, "c": 0} if round_ == 2 else wanted


def test_the_test_hook_delays_the_pass_between_deciding_and_writing() -> None:
    slept: list[float] = []
    writer = FakeWriter()
    pass_runner = PassRunner(
        OperatorSettings(metrics_port=0, pass_delay_seconds=2.5), CATALOG, writer, OperatorMetrics(),
        now=lambda: NOW, sleep=slept.append,
    )  # fmt: skip
    pass_runner.run_pass(Snapshot(nodes(1), [], [dsd("a"), dsd("b")]), ReconcileSettings())
    assert slept == [2.5]


def test_the_api_writer_refuses_every_write_without_the_lease() -> None:
    writer = ApiWriter(client.ApiClient(), leading=lambda: False, metrics=OperatorMetrics())
    calls: list[str] = []
    with pytest.raises(NotLeadingError, match="refusing to patch DeepSeekDeployment"):
        writer._counted("patch", "DeepSeekDeployment", lambda: calls.append("written"))
    assert calls == []  # nothing reached the API server


def test_an_object_still_being_written_by_an_earlier_pass_is_not_written_again_at_the_same_time() -> None:
    writer = FakeWriter(call_seconds=0.3)  # a slow API server: the first pass's applies are still on their way
    pass_runner = runner(writer)
    snapshot = Snapshot(nodes(1), [], [dsd("a")])
    pass_runner.run_pass(snapshot, ReconcileSettings())
    stored = dsd("a", status=writer.statuses["a"])
    pass_runner.run_pass(Snapshot(nodes(1), [], [stored]), ReconcileSettings())  # same decision, applies in flight
    pass_runner.drain()
    applies = [what for what, who in writer.log if who == "a" and what.startswith("apply")]
    assert sorted(applies) == ["apply Deployment", "apply Service"]


def ready_pods_for(status: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """Running, Ready pods on the planned nodes, labelled as dspool's builders label them."""
    from dspool.api import PLACEMENT_LABEL, REPLICA_LABEL, placement_fingerprint

    pods = []
    for raw in status["placements"]:
        placement = ReplicaPlacement.model_validate(raw)
        labels = {"dspool.io/deployment": name, REPLICA_LABEL: str(placement.replica),
                  PLACEMENT_LABEL: placement_fingerprint(placement)}  # fmt: skip
        pods.append({
            "metadata": {"name": f"{name}-{placement.replica}", "namespace": "ai", "labels": labels},
            "spec": {"nodeName": placement.nodes[0].name,
                     "containers": [{"name": "engine", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip
    return pods


def test_a_ready_dsd_whose_inputs_did_not_change_is_not_decided_again_until_something_does() -> None:
    writer = FakeWriter()
    pass_runner = runner(writer)
    node_views = nodes(1)
    pass_runner.run_pass(Snapshot(node_views, [], [dsd("a")]), ReconcileSettings())
    pods = ready_pods_for(writer.statuses["a"], "a")
    body = dsd("a", status=writer.statuses["a"])
    pass_runner.run_pass(Snapshot(node_views, pods, [body]), ReconcileSettings())  # becomes Ready
    ready = dsd("a", status=writer.statuses["a"])
    assert ready["status"]["phase"] == "Ready"
    settings = ReconcileSettings()
    pass_runner.run_pass(Snapshot(node_views, pods, [ready]), settings)
    assert pass_runner.run_pass(Snapshot(node_views, pods, [ready]), settings).skipped == 1
    not_ready = [{**pods[0], "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}}]
    outcome = pass_runner.run_pass(Snapshot(node_views, not_ready, [ready]), settings)  # a pod changed
    assert outcome.skipped == 0 and outcome.results["ai/a"].status.phase == "Progressing"
    pass_runner.run_pass(Snapshot(node_views, pods, [ready]), settings)
    writer.ledger.forget_objects()  # the periodic re-apply: every DSD is decided (and its objects applied) again
    assert pass_runner.run_pass(Snapshot(node_views, pods, [ready]), settings).skipped == 0
    assert pass_runner.run_pass(Snapshot([], pods, [ready]), settings).skipped == 0  # its node is gone


def test_workloads_the_api_server_refuses_are_named_in_the_status_and_not_sent_again_unchanged() -> None:
    class Refusing(FakeWriter):
        def apply_object(self, uid: str, namespace: str, obj: dict[str, Any]) -> None:
            if obj["kind"] != "Deployment":
                return super().apply_object(uid, namespace, obj)
            self._call("refused Deployment", "a")
            why = f"Deployment {obj['metadata']['name']}: spec.template.spec.containers[0].env[1].name: Duplicate"
            self.ledger.record_rejected(uid, object_key(namespace, obj), digest(obj), why)

    writer = Refusing()
    pass_runner = runner(writer)
    pass_runner.run_pass(Snapshot(nodes(1), [], [dsd("a")]), ReconcileSettings())
    pass_runner.drain()
    for _ in range(3):
        pass_runner.run_pass(Snapshot(nodes(1), [], [dsd("a", status=writer.statuses["a"])]), ReconcileSettings())
        pass_runner.drain()
    [condition] = [c for c in writer.statuses["a"]["conditions"] if c["type"] == "WorkloadsAccepted"]
    assert condition["status"] == "False" and condition["reason"] == "Refused" and "Duplicate" in condition["message"]
    assert "refused its workloads" in writer.statuses["a"]["message"]
    assert sum(1 for what, _ in writer.log if what == "refused Deployment") == 1  # not retried unchanged


def test_a_scaled_down_replicas_objects_are_deleted_even_when_the_dsd_is_steady_before_the_sweep_ran() -> None:
    # Found by the fault suite (run 6): the sweep for stale objects was skipped while another write of the DSD
    # was in flight, and the DSD, Ready and unchanged, was never decided (nor swept) again.
    writer = FakeWriter(call_seconds=0.5)  # a slow API server: the first applies are in flight for a while
    pass_runner = runner(writer)
    node_views, settings = nodes(1), ReconcileSettings()
    pass_runner.run_pass(Snapshot(node_views, [], [dsd("a", replicas=2)]), settings)
    first = writer.statuses["a"]
    scaled = dsd("a", replicas=1, status=first)
    pass_runner.run_pass(Snapshot(node_views, [], [scaled]), settings)  # replica 1 goes; its apply is in flight
    one_pod = [p for p in ready_pods_for(first, "a") if p["metadata"]["labels"]["dspool.io/replica"] == "0"]
    for _ in range(4):  # Ready from now on, nothing changes
        pass_runner.run_pass(Snapshot(node_views, one_pod, [dsd("a", replicas=1, status=writer.statuses["a"])]),
                             settings)  # fmt: skip
        pass_runner.drain()
    assert writer.statuses["a"]["phase"] == "Ready"
    assert "Deployment/a-1" in writer.deleted


def test_the_writer_addresses_every_kind_it_builds_without_discovery() -> None:
    from dspool.kube.writer import object_path

    assert object_path("apps/v1", "Deployment", "ai", "r1-0") == "/apis/apps/v1/namespaces/ai/deployments/r1-0"
    assert object_path("v1", "Service", "ai", "r1") == "/api/v1/namespaces/ai/services/r1"
    assert object_path("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", None) == (
        "/apis/leaderworkerset.x-k8s.io/v1/leaderworkersets"
    )


# ------------------------------------------------------------------------------------- the node model cache


def cache_nodes(count: int) -> list[dict[str, Any]]:
    manifests = nodes(count)
    for index, node in enumerate(manifests):
        node["metadata"]["uid"] = f"uid-{index}"
    return manifests


def jobs_of(writer: FakeWriter, **status: Any) -> list[dict[str, Any]]:
    """The Jobs the pass applied, as the watch reports them with this status."""
    return [{**obj, "status": status} for (kind, _), obj in writer.objects.items() if kind == "Job"]


def test_with_a_model_cache_the_pass_fetches_once_per_node_and_the_engine_waits_for_the_weights() -> None:
    writer = FakeWriter()
    pass_runner = runner(writer, model_cache=True)
    settings = ReconcileSettings(model_cache_dir="/var/lib/dspool/models")
    pass_runner.run_pass(Snapshot(cache_nodes(1), [], [dsd("a"), dsd("b")]), settings)
    pass_runner.drain()
    fetches = jobs_of(writer)
    assert len(fetches) == 1  # two DSDs of one model on one node: one fetch
    assert fetches[0]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n-000"]
    engine = writer.objects[("Deployment", "a-0")]["spec"]["template"]["spec"]
    assert [c["name"] for c in engine["initContainers"]] == ["wait-for-weights"]
    condition = next(c for c in writer.statuses["a"]["conditions"] if c["type"] == "WeightsReady")
    assert condition["status"] == "False" and "queued on n-000" in condition["message"]

    stored = [dsd(name, status=writer.statuses[name]) for name in ("a", "b")]
    running = Snapshot(cache_nodes(1), [], stored, cache_jobs=jobs_of(writer, active=1))
    applied_before = sum(1 for what, _ in writer.log if what == "apply Job")
    pass_runner.run_pass(running, settings)  # a restarted operator sees the Job: never a second one
    pass_runner.drain()
    assert sum(1 for what, _ in writer.log if what == "apply Job") == applied_before
    condition = next(c for c in writer.statuses["a"]["conditions"] if c["type"] == "WeightsReady")
    assert "fetching" in condition["message"]

    done = Snapshot(cache_nodes(1), [], [dsd(n, status=writer.statuses[n]) for n in ("a", "b")],
                    cache_jobs=jobs_of(writer, succeeded=1))  # fmt: skip
    pass_runner.run_pass(done, settings)
    condition = next(c for c in writer.statuses["a"]["conditions"] if c["type"] == "WeightsReady")
    assert condition["status"] == "True"


def test_a_node_replaced_under_the_same_name_fetches_again() -> None:
    writer = FakeWriter()
    pass_runner = runner(writer, model_cache=True)
    settings = ReconcileSettings(model_cache_dir="/var/lib/dspool/models")
    pass_runner.run_pass(Snapshot(cache_nodes(1), [], [dsd("a")]), settings)
    pass_runner.drain()
    finished = jobs_of(writer, succeeded=1)
    replaced = cache_nodes(1)
    replaced[0]["metadata"]["uid"] = "uid-of-the-new-machine"
    pass_runner.run_pass(Snapshot(replaced, [], [dsd("a", status=writer.statuses["a"])], cache_jobs=finished), settings)
    pass_runner.drain()
    assert writer.deleted == [f"Job/{finished[0]['metadata']['name']}"]  # the stale record goes, a fetch follows
    condition = next(c for c in writer.statuses["a"]["conditions"] if c["type"] == "WeightsReady")
    assert condition["status"] == "False" and "missing on n-000" in condition["message"]


def test_with_a_model_cache_a_replica_goes_to_the_warm_node_when_a_cold_one_is_as_good() -> None:
    writer = FakeWriter()
    pass_runner = runner(writer, model_cache=True)
    settings = ReconcileSettings(model_cache_dir="/var/lib/dspool/models")
    spec = api.DeepSeekDeploymentSpec(model=SMALL)
    entry = entry_for(spec, CATALOG.model(SMALL), Precision.BF16)
    assert entry is not None
    warm = {
        **fetch_job(WantedEntry(entry, "n-001", "ai"), "uid-1", FetchSettings(image="x")),
        "status": {"succeeded": 1},
    }
    pass_runner.run_pass(Snapshot(cache_nodes(2), [], [dsd("a")], cache_jobs=[warm]), settings)
    placed = writer.statuses["a"]["placements"][0]
    assert [n["name"] for n in placed["nodes"]] == ["n-001"]  # binpack alone would take n-000 (first by name)
    condition = next(c for c in writer.statuses["a"]["conditions"] if c["type"] == "WeightsReady")
    assert condition["status"] == "True"


def test_warm_nodes_keep_the_weights_on_more_nodes_than_the_replicas_use() -> None:
    writer = FakeWriter()
    pass_runner = runner(writer, model_cache=True, max_fetches=8)
    settings = ReconcileSettings(model_cache_dir="/var/lib/dspool/models")
    body = dsd("a")
    body["spec"]["weights"] = {"warmNodes": 2}
    pass_runner.run_pass(Snapshot(cache_nodes(4), [], [body]), settings)
    pass_runner.drain()
    fetched_on = sorted(job["metadata"]["annotations"]["dspool.io/node"] for job in jobs_of(writer))
    placed = writer.statuses["a"]["placements"][0]["nodes"][0]["name"]
    assert len(fetched_on) == 3 and placed in fetched_on  # its node, and two more of the same type
