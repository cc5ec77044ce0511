"""The node model cache's record (fetch Jobs) and what the operator fetches or evicts next."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dspool.catalog import Precision
from dspool.weights.entries import CacheEntry
from dspool.weights.jobs import (
    ENTRY_LABEL,
    EVICT_COMPONENT,
    LAST_USED_ANNOTATION,
    FetchSettings,
    WantedEntry,
    cache_view,
    evict_job,
    fetch_job,
    job_name,
    plan_cache,
)
from dspool.weights.report import cache_rows, format_cache
from dspool.weights.state import EntryState

GIB = 1024**3
SETTINGS = FetchSettings(image="dspool:test", max_per_node=1, max_in_flight=2)
R1 = CacheEntry(model="deepseek-r1", precision=Precision.FP8, source="hf://deepseek-ai/DeepSeek-R1", size_gib=641)
QWEN = CacheEntry(model="qwen-7b", precision=Precision.BF16, source="hf://x/qwen-7b", size_gib=15)
LLAMA = CacheEntry(model="llama-70b", precision=Precision.BF16, source="hf://x/llama-70b", size_gib=132)
UIDS = {"n0": "uid-0", "n1": "uid-1", "n2": "uid-2"}
CAPACITY = {name: 1000 * GIB for name in UIDS}
ENTRIES = {e.id: e for e in (R1, QWEN, LLAMA)}


def wanted(entry: CacheEntry, node: str, **fields: Any) -> WantedEntry:
    return WantedEntry(entry=entry, node=node, namespace="ai", **fields)


def with_status(job: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**job, "status": status}


def done(entry: CacheEntry, node: str, uid: str | None = None, last_used: str | None = None) -> dict[str, Any]:
    job = fetch_job(wanted(entry, node), uid or UIDS[node], SETTINGS)
    if last_used:
        job["metadata"]["annotations"][LAST_USED_ANNOTATION] = last_used
    return with_status(job, succeeded=1)


def test_a_fetch_job_is_pinned_to_its_node_tolerates_its_taints_and_requests_the_disk_it_writes() -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}
    job = fetch_job(wanted(R1, "gpu-node-7", tolerations=(toleration,), credentials_secret="hub-token"), "u", SETTINGS)
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}]}]
    assert (
        toleration in pod["tolerations"]
        and {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    )
    container = pod["containers"][0]
    assert container["resources"]["requests"]["ephemeral-storage"] == "641Gi"
    assert container["envFrom"] == [{"secretRef": {"name": "hub-token"}}]  # credentials never as values
    assert "--entry" in container["command"] and R1.id in container["command"]
    assert pod["volumes"][0]["hostPath"] == {"path": "/var/lib/dspool/models", "type": "DirectoryOrCreate"}
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"] == job_name(
        "model-fetch", R1.id, "gpu-node-7"
    )


def test_the_record_reads_ready_fetching_failed_and_missing_from_the_jobs() -> None:
    failed = with_status(
        fetch_job(wanted(LLAMA, "n1"), UIDS["n1"], SETTINGS),
        conditions=[{"type": "Failed", "status": "True", "message": "sha256 mismatch in model-00003.safetensors"}],
    )
    jobs = [
        done(R1, "n0"),
        with_status(fetch_job(wanted(QWEN, "n0"), UIDS["n0"], SETTINGS), active=1),
        failed,
        done(QWEN, "n2", uid="uid-of-the-old-node"),
        done(R1, "gone-node", uid="uid-gone"),
    ]
    view = cache_view(jobs, UIDS, CAPACITY)
    assert view.nodes["n0"].entries[R1.id].state == EntryState.READY
    assert view.nodes["n0"].entries[QWEN.id].state == EntryState.FETCHING
    assert view.nodes["n1"].entries[LLAMA.id].state == EntryState.FAILED
    assert "sha256 mismatch" in view.nodes["n1"].entries[LLAMA.id].reason
    assert view.nodes["n2"].entries[QWEN.id].state == EntryState.MISSING  # replaced node: an empty disk
    assert "gone-node" not in view.nodes


def test_entries_are_fetched_within_the_bounds_and_never_twice() -> None:
    jobs = [with_status(fetch_job(wanted(R1, "n0"), UIDS["n0"], SETTINGS), active=1)]
    view = cache_view(jobs, UIDS, CAPACITY)
    plan = plan_cache(
        [wanted(R1, "n0"), wanted(QWEN, "n0"), wanted(R1, "n1"), wanted(R1, "n2")],
        view,
        jobs,
        UIDS,
        CAPACITY,
        ENTRIES,
        SETTINGS,
    )
    created = [
        (j["metadata"]["labels"][ENTRY_LABEL], j["metadata"]["annotations"]["dspool.io/node"]) for j in plan.create
    ]
    assert created == [(R1.id, "n1")]  # n0 is busy (1 per node), and 2 fetches at once pool-wide
    assert "queued" in plan.waiting[(QWEN.id, "n0")] and "queued" in plan.waiting[(R1.id, "n2")]


def test_failed_and_missing_entries_are_fetched_again_after_their_record_goes() -> None:
    failed = with_status(
        fetch_job(wanted(R1, "n0"), UIDS["n0"], SETTINGS), conditions=[{"type": "Failed", "status": "True"}]
    )
    stale = done(R1, "n1", uid="old")
    jobs = [failed, stale]
    plan = plan_cache(
        [wanted(R1, "n0"), wanted(R1, "n1")], cache_view(jobs, UIDS, CAPACITY), jobs, UIDS, CAPACITY, ENTRIES, SETTINGS
    )
    assert sorted(plan.delete) == sorted((j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs)
    assert not plan.create  # the new Job takes the old one's name: it is created once the old one is gone
    again = plan_cache([wanted(R1, "n0"), wanted(R1, "n1")], cache_view([], UIDS, CAPACITY), [], UIDS, CAPACITY,
                       ENTRIES, SETTINGS)  # fmt: skip
    assert len(again.create) == 2


def test_a_full_cache_evicts_the_least_recently_used_entry_no_replica_uses_and_never_one_in_use() -> None:
    capacity = {"n0": 700 * GIB}
    uids = {"n0": "uid-0"}
    jobs = [
        done(QWEN, "n0", last_used="2026-12-01T00:00:00Z"),
        done(LLAMA, "n0", last_used="2026-11-01T00:00:00Z"),  # older: goes first
    ]
    plan = plan_cache([wanted(R1, "n0")], cache_view(jobs, uids, capacity), jobs, uids, capacity, ENTRIES, SETTINGS)
    assert [
        (j["metadata"]["labels"]["dspool.io/component"], j["metadata"]["labels"][ENTRY_LABEL]) for j in plan.create
    ] == [
        (EVICT_COMPONENT, LLAMA.id)
    ]  # 700 - 15 - 132 < 641 but 700 - 15 >= 641: one eviction is enough, and R1 waits for it
    assert "evicting" in plan.waiting[(R1.id, "n0")]
    in_use = plan_cache(
        [wanted(R1, "n0"), wanted(LLAMA, "n0")],
        cache_view(jobs, uids, capacity),
        jobs,
        uids,
        capacity,
        ENTRIES,
        SETTINGS,
    )
    assert not [j for j in in_use.create if j["metadata"]["labels"][ENTRY_LABEL] == LLAMA.id]
    assert "cannot hold" in in_use.waiting[(R1.id, "n0")]


def test_a_finished_eviction_removes_the_record_and_the_entry_is_missing_meanwhile() -> None:
    uids = {"n0": "uid-0"}
    eviction = evict_job(LLAMA, "n0", "uid-0", "ai", SETTINGS)
    jobs = [done(LLAMA, "n0"), eviction]
    assert cache_view(jobs, uids, CAPACITY).nodes["n0"].entries[LLAMA.id].state == EntryState.MISSING
    finished = [done(LLAMA, "n0"), with_status(eviction, succeeded=1)]
    plan = plan_cache([], cache_view(finished, uids, CAPACITY), finished, uids, CAPACITY, ENTRIES, SETTINGS)
    assert len(plan.delete) == 2 and not plan.create


def test_dspool_cache_prints_one_row_per_node_and_entry_with_its_state() -> None:
    jobs = [done(R1, "n0"), with_status(fetch_job(wanted(QWEN, "n1"), UIDS["n1"], SETTINGS), active=1)]
    rows = cache_rows(cache_view(jobs, UIDS, CAPACITY))
    assert [(r["node"], r["state"], r["sizeGiB"]) for r in rows] == [("n0", "Ready", 641.0), ("n1", "Fetching", 15.0)]
    table = format_cache(rows).splitlines()
    assert table[0].split()[:3] == ["NODE", "ENTRY", "STATE"] and "641/1000Gi" in table[1]


def test_entries_in_use_get_their_last_used_time_refreshed_at_most_hourly() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    jobs = [done(R1, "n0"), done(QWEN, "n0", last_used="2026-12-05T11:30:00Z"), done(LLAMA, "n0")]
    plan = plan_cache(
        [wanted(R1, "n0"), wanted(QWEN, "n0")], cache_view(jobs, UIDS, CAPACITY), jobs, UIDS, CAPACITY, ENTRIES,
        SETTINGS, now,
    )  # fmt: skip
    assert plan.touch == [("ai", jobs[0]["metadata"]["name"])]  # never stamped; QWEN's is recent; LLAMA unused
