"""Workloads the cluster refuses: classification, mapping to DSDs and the condition (dspool.refusals)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dspool.refusals import (
    REFUSED_CONDITION,
    classify,
    compact_failed_create,
    compact_workload,
    newly_refused,
    pods_wanted,
    refusals_by_deployment,
    with_workload_refusals,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
QUOTA = (
    'pods "r1-0-7bcb9f96f9-x8x5l" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=8, '
    "used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=4"
)
WEBHOOK = 'admission webhook "policy.example.io" denied the request: images must come from the site mirror'


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_refusals_are_named_by_what_refused() -> None:
    assert classify(QUOTA) == "QuotaExceeded"
    assert classify(WEBHOOK) == "WebhookDenied"
    assert classify("pods \"x\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: no") == (
        "AdmissionPolicyDenied"
    )
    assert classify('pods "x" is forbidden: maximum cpu usage per Container is 4, but limit is 8') == (
        "LimitRangeViolated"
    )
    assert classify('pods "x" is forbidden: violates PodSecurity "restricted:latest": ...') == "PodSecurityViolated"
    assert classify("something else") == "PodCreateFailed"


def test_a_deployment_with_replica_failure_and_fresh_events_map_to_their_dsds() -> None:
    deployment = {
        "metadata": {"namespace": "ai", "name": "r1-0", "labels": {"dspool.io/deployment": "r1"}},
        "status": {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                   "message": QUOTA}]},
    }  # fmt: skip
    healthy = {"metadata": {"namespace": "ai", "name": "ok-0", "labels": {"dspool.io/deployment": "ok"}}}
    workloads = [v for v in (compact_workload(deployment), compact_workload(healthy)) if v is not None]
    assert len(workloads) == 1

    def event(kind: str, name: str, message: str, age: timedelta) -> dict[str, object]:
        return {"reason": "FailedCreate", "message": message, "lastTimestamp": stamp(NOW - age),
                "involvedObject": {"kind": kind, "namespace": "ai", "name": name}}  # fmt: skip

    events = [
        compact_failed_create(event("StatefulSet", "big-0-w", WEBHOOK, timedelta(seconds=30))),
        compact_failed_create(event("StatefulSet", "big-0-3", WEBHOOK, timedelta(seconds=20))),  # an LWS group
        compact_failed_create(event("StatefulSet", "r1-0-0-w", QUOTA, timedelta(seconds=10))),  # DSD "r1-0"
        compact_failed_create(event("StatefulSet", "old-0", QUOTA, timedelta(hours=1))),  # stale
        compact_failed_create({"reason": "Pulled", "involvedObject": {"kind": "Pod", "name": "x"}}),
    ]
    owners = {("ai", "r1-0"): "r1", ("ai", "r1-0-0"): "r1-0", ("ai", "big-0"): "big", ("ai", "big-0-w"): "big",
              ("ai", "old-0"): "old"}  # fmt: skip
    found = refusals_by_deployment(workloads, [e for e in events if e], owners, NOW)
    assert set(found) == {("ai", "r1"), ("ai", "r1-0"), ("ai", "big")}
    assert [r.reason for r in found[("ai", "r1")]] == ["QuotaExceeded"]
    assert [r.name for r in found[("ai", "r1-0")]] == ["r1-0-0-w"]
    assert {r.name for r in found[("ai", "big")]} == {"big-0-w", "big-0-3"}
    assert {r.reason for r in found[("ai", "big")]} == {"WebhookDenied"}


def test_the_condition_names_the_refusal_keeps_its_start_and_an_event_is_news_once() -> None:
    [refusal] = refusals_by_deployment(
        [{"namespace": "ai", "name": "r1-0", "label": "r1", "kind": "Deployment", "message": QUOTA}], [], {}, NOW
    )[("ai", "r1")]
    status = with_workload_refusals({"phase": "Progressing", "conditions": []}, {}, [refusal], NOW)
    [condition] = [c for c in status["conditions"] if c["type"] == REFUSED_CONDITION]
    assert condition["status"] == "True" and condition["reason"] == "QuotaExceeded"
    assert condition["message"] == f"Deployment r1-0: {QUOTA}"
    assert status["message"].startswith("the cluster refuses its pods (QuotaExceeded): Deployment r1-0")
    assert newly_refused({}, [refusal])
    later = with_workload_refusals({"phase": "Progressing"}, status, [refusal], NOW + timedelta(minutes=5))
    assert later["conditions"][-1]["lastTransitionTime"] == condition["lastTransitionTime"]
    assert not newly_refused(status, [refusal])
    assert with_workload_refusals({"phase": "Ready"}, status, [], NOW) == {"phase": "Ready"}


REPLICA_SET = {"kind": "ReplicaSet", "namespace": "ai", "name": "r1-0-84659f7b4b"}


def test_a_lasting_refusal_reads_the_same_at_every_retry_and_a_deployments_replicaset_is_not_repeated() -> None:
    first = compact_failed_create({
        "reason": "FailedCreate", "lastTimestamp": stamp(NOW), "involvedObject": REPLICA_SET,
        "message": f'Error creating: pods "r1-0-84659f7b4b-n7v5g" is forbidden: {QUOTA.split("forbidden: ")[1]}',
    })  # fmt: skip
    again = compact_failed_create({
        "reason": "FailedCreate", "lastTimestamp": stamp(NOW), "involvedObject": REPLICA_SET,
        "message": f'(combined from similar events): Error creating: pods "r1-0-84659f7b4b-94jg6" is forbidden: '
        f'{QUOTA.split("forbidden: ")[1]}',
    })  # fmt: skip
    assert first is not None and again is not None and first["message"] == again["message"]
    assert first["message"].startswith("pods are forbidden: exceeded quota: gpus")
    deployment = {"namespace": "ai", "name": "r1-0", "label": "r1", "kind": "Deployment", "message": "x"}
    found = refusals_by_deployment([deployment], [first], {("ai", "r1-0"): "r1"}, NOW)
    assert [r.kind for r in found[("ai", "r1")]] == ["Deployment"]  # its ReplicaSet's events add nothing
    # once the Deployment's condition clears, its ReplicaSet's old events do not keep the refusal alive
    assert refusals_by_deployment([], [first], {("ai", "r1-0"): "r1"}, NOW) == {}


def test_pods_wanted_counts_deployments_statefulsets_and_lws_groups() -> None:
    objects = [
        {"kind": "Deployment", "spec": {"replicas": 1}},
        {"kind": "StatefulSet", "spec": {"replicas": 3}},
        {"kind": "LeaderWorkerSet", "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2}}},
        {"kind": "Service", "spec": {}},
    ]
    assert pods_wanted(objects) == 6
