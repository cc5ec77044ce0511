"""The light informer with a scripted API: paged lists, watch events, heartbeats, a too-old resource version."""

from __future__ import annotations

import json
import threading
from typing import Any

from test_loop import FakeWriter

from dspool.kube.informer import Informer
from dspool.kube.runtime import OperatorRuntime, _compact_pod
from dspool.loop import PassRunner
from dspool.metrics import OperatorMetrics
from dspool.reconcile import ReconcileSettings
from dspool.settings import OperatorSettings
from dspool.views import compact_node


class Response:
    """What the kubernetes client returns with ``_preload_content=False``."""

    def __init__(self, data: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(data).encode() if data is not None else b""
        self._lines = lines or []

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        for line in self._lines:
            yield (json.dumps(line) + "\n").encode()

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


def node(name: str, gpus: str = "8", heartbeat: str = "t0", version: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}, "resourceVersion": version},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": gpus}, "capacity": {"nvidia.com/gpu": gpus},
                   "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]},
    }  # fmt: skip


class ScriptedApi:
    """Serves list pages and watch streams from a script; the informer stops after the last watch."""

    def __init__(self, lists: list[list[dict[str, Any]]], watches: list[list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.informer: Informer | None = None

    def __call__(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            if not self.watches:
                assert self.informer is not None
                self.informer.stop()
                self.done.set()
                return Response(lines=[])
            return Response(lines=self.watches.pop(0))
        pages = self.lists[0]
        index = 1 if kwargs.get("_continue") else 0
        if index == len(pages) - 1 or len(pages) == 1:
            self.lists.pop(0)
        return Response(data=pages[index])


def run(api: ScriptedApi, journal: bool = False) -> tuple[Informer, list[int]]:
    changes: list[int] = []
    informer = Informer("nodes", api, lambda body: (body["metadata"]["name"], compact_node(body)),
                        lambda: changes.append(1), journal=journal)  # fmt: skip
    api.informer = informer
    informer.start()
    assert api.done.wait(10)
    return informer, changes


def test_a_paged_list_then_watch_events_keep_compact_views_and_heartbeats_wake_nothing() -> None:
    pages = [{"items": [node("a")], "metadata": {"continue": "tok"}},
             {"items": [node("b")], "metadata": {"resourceVersion": "10"}}]  # fmt: skip
    events = [
        {"type": "MODIFIED", "object": node("a", heartbeat="t1", version="11")},  # a heartbeat: no change
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
        {"type": "MODIFIED", "object": node("b", gpus="4", version="13")},
        {"type": "DELETED", "object": node("a", version="14")},
    ]
    informer, changes = run(ScriptedApi([pages], [events]))
    assert informer.synced.is_set()
    views = {v["metadata"]["name"]: v for v in informer.values()}
    assert set(views) == {"b"} and views["b"]["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert len(changes) == 3  # the list, b's new size, a's deletion; not the heartbeat nor the bookmark


def test_a_too_old_resource_version_lists_again_from_scratch() -> None:
    api = ScriptedApi(
        [[{"items": [node("a")], "metadata": {"resourceVersion": "5"}}],
         [{"items": [node("c")], "metadata": {"resourceVersion": "50"}}]],
        [[{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}], []],
    )  # fmt: skip
    informer, _ = run(api)
    assert [v["metadata"]["name"] for v in informer.values()] == ["c"]
    watch_versions = [c["resource_version"] for c in api.calls if c.get("watch")]
    assert watch_versions == ["5", "50", "50"]  # 410: list again; a watch that just ends resumes, no list
    assert sum(1 for c in api.calls if not c.get("watch")) == 2


def test_the_journal_names_each_key_changed_since_the_last_take_with_its_last_view() -> None:
    pages = [{"items": [node("a"), node("b")], "metadata": {"resourceVersion": "10"}}]
    events = [
        {"type": "MODIFIED", "object": node("a", heartbeat="t1", version="11")},  # a heartbeat: not a change
        {"type": "MODIFIED", "object": node("b", gpus="4", version="12")},
        {"type": "MODIFIED", "object": node("b", gpus="2", version="13")},
        {"type": "ADDED", "object": node("c", version="14")},
        {"type": "DELETED", "object": node("c", version="15")},
    ]
    informer, _ = run(ScriptedApi([pages], [events]), journal=True)
    views, changes = informer.take()
    assert set(changes) == {"a", "b", "c"}  # everything is new to the first take
    assert (
        changes["c"] is None
        and changes["b"] is not None
        and changes["b"]["status"]["allocatable"] == {"nvidia.com/gpu": "2"}
    )
    assert [v["metadata"]["name"] for v in views] == ["a", "b"]
    assert informer.take() == (views, {})  # taken: nothing changed since


def test_a_relist_keeps_the_objects_of_views_that_did_not_change_and_journals_only_the_others() -> None:
    api = ScriptedApi(
        [[{"items": [node("a"), node("b")], "metadata": {"resourceVersion": "5"}}],
         [{"items": [node("a", heartbeat="t9"), node("c")], "metadata": {"resourceVersion": "50"}}]],
        [[], [{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}], []],
    )  # fmt: skip
    informer = Informer("nodes", api, lambda body: (body["metadata"]["name"], compact_node(body)), lambda: None,
                        journal=True)  # fmt: skip
    api.informer = informer
    first: list[dict[str, Any]] = []
    original = api.__call__

    def calls(**kwargs: Any) -> Response:
        if kwargs.get("watch") and not first:  # between the first list and the relist: the pass takes the views
            first.extend(informer.take()[0])
        return original(**kwargs)

    informer.list_call = calls
    informer.start()
    assert api.done.wait(10)
    views, changes = informer.take()
    assert changes == {"b": None, "c": views[1]}  # a did not change: not journalled
    assert views[0] is first[0]  # and its view is the same object


def test_watch_events_reach_the_pass_pool_through_the_runtimes_snapshot() -> None:
    runtime = OperatorRuntime(OperatorSettings(metrics_port=0))
    for name in ("nodes", "pods", "deepseekdeployments", "poddisruptionbudgets", "failingworkloads", "failedcreates"):
        runtime.informers[name] = Informer(name, ScriptedApi([], []), lambda body: ("", None), lambda: None)
    nodes = Informer("nodes", ScriptedApi([], []), runtime._compact_node, lambda: None, journal=True)
    pods = Informer("pods", ScriptedApi([], []), _compact_pod, lambda: None, journal=True)
    runtime.informers.update(nodes=nodes, pods=pods)
    labels = {"nvidia.com/gpu.product": "NVIDIA-L20", "nvidia.com/gpu.count": "8"}
    three = {"name": "c", "resources": {"requests": {"nvidia.com/gpu": "3"}}}
    busy = {"metadata": {"name": "p", "namespace": "apps", "labels": {}},
            "spec": {"nodeName": "a", "containers": [three]}, "status": {"phase": "Running"}}  # fmt: skip
    for informer, event in ((nodes, {**node("a"), "metadata": {"name": "a", "labels": labels}}), (pods, busy)):
        informer._handle("ADDED", event)
    runner = PassRunner(OperatorSettings(metrics_port=0), runtime.catalog, FakeWriter(), OperatorMetrics())
    assert runner.live is not None
    runner.run_pass(runtime.snapshot(), ReconcileSettings())
    assert (runner.live.pool.nodes["a"].used, runner.live.pool.nodes["a"].free) == (3, 5)
    pods._handle("MODIFIED", {**busy, "status": {"phase": "Succeeded"}})  # the pod finished: its devices are free
    snapshot = runtime.snapshot()
    assert snapshot.changes is not None and list(snapshot.changes.pods) == ["apps/p"] and not snapshot.changes.nodes
    runner.run_pass(snapshot, ReconcileSettings())
    assert runner.live.pool.nodes["a"].free == 8
