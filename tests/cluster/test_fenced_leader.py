"""Two operators, a short Lease and a slow pass: the leader is frozen (SIGSTOP) between deciding and writing,
the standby takes over, and when the old leader thaws it writes nothing.

The operator's test hook ``DSPOOL_TEST_PASS_DELAY_SECONDS`` makes every pass sleep between its decisions and
its writes; the Lease is shortened with ``--lease-seconds``. The scenario:

1. Pool of one L20 server (``n1``); a second one (``n2``) exists outside the pool. Operator A leads, B waits.
2. DSD ``warm`` is placed by A; as soon as its status appears, A's next pass starts, and DSD ``x`` is created
   so that this pass decides ``x`` onto ``n1``. A is frozen in the pass's sleep, before it writes ``x``.
3. While A is frozen: ``n2`` joins the pool and ``n1`` is deleted. The Lease expires; B takes it and places
   both DSDs on ``n2``.
4. A thaws. It must notice it lost the Lease and write nothing: no status naming ``n1`` ever appears again
   (A's stale decision), its log says it lost the lease and logs no posted event afterwards, B stays holder,
   and ``n2`` is not oversubscribed.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import OperatorProcess, PoolOf, wait_for
from kubernetes import client, watch

from dspool import api
from dspool.sim.fleet import POOL_LABEL

# A is frozen 1.5 s into a 3 s pass: a busy machine (parallel tests) could move the pass out of that window.
pytestmark = pytest.mark.quiet

PASS_DELAY_HOOK = "DSPOOL_TEST_PASS_DELAY_SECONDS"
LEASE_SECONDS = 4
PASS_DELAY_SECONDS = 3.0


def lease_options() -> tuple[list[str], dict[str, str]]:
    """A short Lease for both operators."""
    return ["--lease-seconds", str(LEASE_SECONDS)], {}


class PlacementRecorder:
    """Every placement the namespace's DSDs are stored with, from a watch started before the thaw."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.custom, self.namespace = custom, namespace
        self.seen: list[tuple[str, list[str]]] = []  # (DSD, nodes of its placements) per stored version
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        stream = watch.Watch().stream(self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION,
                                      self.namespace, api.PLURAL, timeout_seconds=60)  # fmt: skip
        for event in stream:
            body = event["object"]
            placements = (body.get("status") or {}).get("placements") or []
            self.seen.append((body["metadata"]["name"], [n["name"] for p in placements for n in p["nodes"]]))
            if self.stop.is_set():
                return

    def __enter__(self) -> PlacementRecorder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()


def holder(coordination: client.CoordinationV1Api, namespace: str, lease: str) -> str:
    """The Lease's holder identity ('' when free or absent)."""
    try:
        spec = coordination.read_namespaced_lease(lease, namespace).spec
    except client.exceptions.ApiException:
        return ""
    return (spec.holder_identity or "") if spec else ""


def log_lines(operator: OperatorProcess) -> list[dict[str, Any]]:
    """The operator's JSON log lines (others skipped)."""
    lines = []
    for raw in operator.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def test_a_frozen_leader_that_lost_the_lease_writes_nothing_when_it_thaws(
    pool_of: PoolOf, core_v1: client.CoreV1Api, custom: client.CustomObjectsApi, api_client: client.ApiClient,
    namespace: str, kubeconfig: str, tmp_path: Path, crd_installed: None,
) -> None:  # fmt: skip
    pool = pool_of("fenced", """
        - {name: l20, count: 2, accelerator: L20-48G}
    """)  # fmt: skip
    n1, n2 = sorted(pool.node_names)
    core_v1.patch_node(n2, {"metadata": {"labels": {POOL_LABEL: f"{pool.name}-spare"}}})  # outside the pool for now
    flags, env = lease_options()
    operators = []
    for index in range(2):
        operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / f"operator-{'ab'[index]}.log")
        operator.args += flags
        operator.env.update({**env, PASS_DELAY_HOOK: str(PASS_DELAY_SECONDS)})
        operators.append(operator)
    a, b = operators
    coordination = client.CoordinationV1Api(api_client)
    lease = f"dspool-{pool.name}"
    try:
        a.start()
        assert a.process is not None
        wait_for(lambda: f"-{a.process.pid}-" in holder(coordination, namespace, lease), 60, "operator A to lead")  # type: ignore[union-attr]
        b.start()
        assert b.process is not None
        wait_for(lambda: "connected" in b.log_path.read_text(errors="replace"), 60, "operator B to be up")

        # A's pass that writes `warm` is followed by one that decides `x`: freeze A in that pass's sleep.
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "warm"},
                "spec": {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 1}}  # fmt: skip
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)

        def placed(name: str) -> list[dict[str, Any]]:
            dsd = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
            return list((dsd.get("status") or {}).get("placements") or [])

        wait_for(lambda: placed("warm"), 60, "A to place `warm`", interval=0.05)
        body = {**body, "metadata": {"name": "x"}, "spec": {"model": "deepseek-r1-distill-llama-8b", "replicas": 1}}
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)
        time.sleep(PASS_DELAY_SECONDS / 2)
        a.process.send_signal(signal.SIGSTOP)
        assert not placed("x"), "A wrote `x` before it was frozen: the pass delay hook did not hold the write back"

        core_v1.patch_node(n2, {"metadata": {"labels": {POOL_LABEL: pool.name}}})
        core_v1.delete_node(n1)
        wait_for(lambda: f"-{b.process.pid}-" in holder(coordination, namespace, lease), 60, "B to take the Lease")  # type: ignore[union-attr]
        wait_for(lambda: [n["name"] for p in placed("x") for n in p["nodes"]] == [n2], 60, "B to place `x` on n2")
        wait_for(lambda: [n["name"] for p in placed("warm") for n in p["nodes"]] == [n2], 60, "`warm` moved to n2")

        with PlacementRecorder(custom, namespace) as recorder:
            a.process.send_signal(signal.SIGCONT)
            wait_for(lambda: any("lost the lease" in line.get("message", "") for line in log_lines(a)), 30,
                     "A to say it lost the lease")  # fmt: skip
            time.sleep(2 * (PASS_DELAY_SECONDS + LEASE_SECONDS))  # A's stale pass, and more, would have written
        stale = [(name, nodes) for name, nodes in recorder.seen if n1 in nodes]
        assert not stale, f"a status naming the deleted node {n1} was written after A thawed: {stale}"
        assert f"-{b.process.pid}-" in holder(coordination, namespace, lease)
        assert a.process.poll() is None, "A exited after it thawed"

        lines = log_lines(a)
        lost = next(i for i, line in enumerate(lines) if "lost the lease" in line.get("message", ""))
        posted = [line["message"] for line in lines[lost:] if line.get("message", "").startswith(f"{namespace}/")]
        assert not posted, f"A posted events after it lost the lease: {posted}"
        assert any("lost the lease during a pass" in line.get("message", "") for line in lines[lost:]), (
            "A's frozen pass never reached a write: the scenario did not test the fence mid-pass"
        )
        devices = sum(
            n["devices"] for name in ("warm", "x") for p in placed(name) for n in p["nodes"] if n["name"] == n2
        )
        assert devices <= 8, f"{devices} devices booked on {n2}"
    finally:
        for operator in operators:
            if operator.process is not None and operator.process.poll() is None:
                operator.process.send_signal(signal.SIGCONT)
            operator.stop()
