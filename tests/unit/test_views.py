"""Pure helpers of the watches: selectors, compaction, which nodes keep their replicas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dspool.selectors import equality_selector, selector_selects
from dspool.views import compact_node, compact_pod, parse_selector, present_nodes

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def node(name: str, ready: str = "True", since: datetime = NOW, unschedulable: bool = False) -> dict[str, Any]:
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return compact_node({
        "metadata": {"name": name, "labels": {}},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": stamp, "lastHeartbeatTime": stamp},
            {"type": "MemoryPressure", "status": "False"}]},
    })  # fmt: skip


def test_selector_parsing_and_matching() -> None:
    selector = parse_selector("dspool.io/pool=a, gpu")
    assert selector == {"dspool.io/pool": "a", "gpu": ""}
    assert selector_selects(equality_selector(selector), {"dspool.io/pool": "a", "gpu": "yes"})
    assert not selector_selects(equality_selector(selector), {"dspool.io/pool": "b", "gpu": "yes"})
    assert not selector_selects(equality_selector(selector), {"dspool.io/pool": "a"})  # gpu must exist
    with pytest.raises(ValueError, match="bad label selector"):
        parse_selector("=x")


def test_heartbeats_do_not_change_the_compacted_node() -> None:
    first = node("n")
    later = compact_node({"metadata": {"name": "n", "labels": {}}, "spec": {}, "status": {"conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "lastHeartbeatTime": (NOW + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}]}})  # fmt: skip
    assert first == later


def test_nodes_not_ready_briefly_or_cordoned_keep_their_replicas() -> None:
    nodes = [
        node("ready"),
        node("cordoned", unschedulable=True),
        node("blip", ready="Unknown", since=NOW - timedelta(seconds=10)),
        node("down", ready="False", since=NOW - timedelta(minutes=5)),
    ]
    assert present_nodes(nodes, NOW, grace_seconds=60) == {"ready", "cordoned", "blip"}


def test_pods_without_devices_or_dspool_labels_are_not_kept() -> None:
    plain = {"metadata": {"name": "web", "labels": {}}, "spec": {"containers": [{"name": "c"}]}, "status": {}}
    assert compact_pod(plain) is None
    sidecar = {
        "metadata": {"name": "p", "namespace": "x", "labels": {}},
        "spec": {"nodeName": "n", "containers": [{"name": "c"}], "initContainers": [
            {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip
    kept = compact_pod(sidecar)
    assert kept is not None and kept["spec"]["initContainers"][0]["restartPolicy"] == "Always"
