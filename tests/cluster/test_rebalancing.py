"""Rebalancing on the real control plane: small replicas move make-before-break so an R1 fits.

The pool: two H100 servers (one fabric) and one L20 server. The small replicas land on an H100 while the L20
is cordoned; once it is back, R1 (2 x 8 H100) finds no whole pair of H100 servers. With rebalancing off it
stays Unschedulable; with it on, the small replicas get new copies on the L20 first, the old ones go once
the new ones are Ready, and R1 is placed. The small DSD's Ready replicas are sampled all along.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import OperatorProcess, PoolOf, wait_for
from kubernetes import client
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

R1 = {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H100-80G"]}}
SMALL = {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 2}


def ready_pods(core_v1: client.CoreV1Api, namespace: str, name: str) -> int:
    count = 0
    for pod in pods_of(core_v1, namespace, name):
        conditions = pod.status.conditions or []
        if pod.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in conditions
        ):
            count += 1
    return count


class ReadySampler:
    """Samples a DSD's Ready pods in the background: the lowest count seen is what a client lived through."""

    def __init__(self, core_v1: client.CoreV1Api, namespace: str, name: str) -> None:
        self.core_v1, self.namespace, self.name = core_v1, namespace, name
        self.lowest: int | None = None
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                count = ready_pods(self.core_v1, self.namespace, self.name)
            except Exception:  # a transient API error is not a serving gap
                continue
            self.lowest = count if self.lowest is None else min(self.lowest, count)
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> ReadySampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def fragmented(
    pool_of: PoolOf, core_v1: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str,
    kubeconfig: str, tmp_path: Any, crd_installed: None,
) -> Iterator[Callable[..., tuple[PoolHandle, OperatorProcess]]]:  # fmt: skip
    """A pool whose H100 servers hold small replicas while the L20 was cordoned; returns a factory that
    starts an operator with the given --rebalance mode."""
    pool = pool_of("rebalance", """
        - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
        - {name: l20, count: 1, accelerator: L20-48G, labels: {dspool.io/fabric: eth-1}}
    """)  # fmt: skip
    l20 = next(n for n in pool.node_names if "l20" in n)
    operators: list[OperatorProcess] = []

    def start(mode: str) -> OperatorProcess:
        operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / f"operator-{len(operators)}.log")
        operator.args += ["--rebalance", mode, "--rebalance-cooldown-seconds", "0"]
        operator.start()
        operators.append(operator)
        return operator

    core_v1.patch_node(l20, {"spec": {"unschedulable": True}})
    first = start("off")
    create_dsd(custom, namespace, "small", SMALL)
    small = wait_phase(custom, namespace, "small", "Ready", 90)
    assert {n for replica in placed_nodes(small) for n, _ in replica} <= {n for n in pool.node_names if "h100" in n}
    first.stop()
    core_v1.patch_node(l20, {"spec": {"unschedulable": False}})
    yield lambda mode: (pool, start(mode))
    for operator in operators:
        operator.stop()


def test_an_r1_refused_without_rebalancing_is_placed_after_small_replicas_move_make_before_break(
    fragmented: Callable[..., tuple[PoolHandle, OperatorProcess]],
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, operator = fragmented("off")
    create_dsd(custom, namespace, "r1", R1)
    refused = wait_phase(custom, namespace, "r1", "Unschedulable", 60)
    assert "H100-80G" in refused["status"]["message"]
    operator.stop()

    pool, operator = fragmented("on")
    with ReadySampler(core_v1, namespace, "small") as sampler:
        r1 = wait_phase(custom, namespace, "r1", "Ready", 180)
        assert sorted(n for n, _ in placed_nodes(r1)[0]) == sorted(n for n in pool.node_names if "h100" in n)
        wait_for(lambda: ready_pods(core_v1, namespace, "small") == 2, 60, "the small DSD serving two replicas")
    assert sampler.samples > 10 and sampler.lowest is not None and sampler.lowest >= 2, (
        f"the small DSD dropped to {sampler.lowest} Ready pods during the move"
    )
    small = get_dsd(custom, namespace, "small")
    l20 = next(n for n in pool.node_names if "l20" in n)
    assert {n for replica in placed_nodes(small) for n, _ in replica} == {l20}
    assert all(m["state"] == "Done" for m in small["status"]["moves"])
    wait_for(lambda: has_event(core_v1, namespace, "small", "Moved", "Normal"), 30, "a Moved event on the small DSD")
    wait_for(lambda: has_event(core_v1, namespace, "r1", "Rebalancing", "Normal"), 30, "a Rebalancing event on R1")
    assert_no_node_oversubscribed(core_v1, pool)
    metrics = operator.metrics()
    assert 'dspool_rebalance_moves_total{event="finished"} 2.0' in metrics
    assert "dspool_rebalance_devices_freed_total 2.0" in metrics


def test_a_dry_run_says_what_would_move_and_a_dsd_that_forbids_moves_stays_put(
    fragmented: Callable[..., tuple[PoolHandle, OperatorProcess]],
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str, kubeconfig: str,
) -> None:  # fmt: skip
    _pool, operator = fragmented("dry-run")
    create_dsd(custom, namespace, "r1", R1)

    def rebalancing_condition() -> dict[str, Any] | None:
        conditions = (get_dsd(custom, namespace, "r1").get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Rebalancing"), None)

    condition = wait_for(rebalancing_condition, 60, "a Rebalancing condition on the waiting R1")
    assert condition["reason"] == "Possible" and "would move 2 replica(s)" in condition["message"]
    shown = subprocess.run(
        [sys.executable, "-m", "dspool", "rebalance", "--dry-run", "--kubeconfig", kubeconfig,
         "--node-selector", f"dspool.io/pool={_pool.name}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"{namespace}/r1#0" in shown.stdout and f"{namespace}/small#0" in shown.stdout, shown.stdout
    before = placed_nodes(get_dsd(custom, namespace, "small"))
    time.sleep(6)  # passes go by; nothing moves in a dry run
    assert placed_nodes(get_dsd(custom, namespace, "small")) == before
    assert get_dsd(custom, namespace, "r1")["status"]["phase"] == "Unschedulable"
    operator.stop()

    # The small DSD forbids moves: with rebalancing on, R1 still waits, and the reason says why.
    custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "small",
                                          {"spec": {"placement": {"rebalance": "Never"}}})  # fmt: skip
    _pool, operator = fragmented("on")
    wait_for(lambda: (c := rebalancing_condition()) and "Never" in c["message"] and c, 60,
             "the Rebalancing condition to name the DSD that may not move")  # fmt: skip
    time.sleep(6)
    assert placed_nodes(get_dsd(custom, namespace, "small")) == before
    assert not get_dsd(custom, namespace, "small")["status"].get("moves")


def test_an_operator_killed_mid_move_recovers_with_no_double_booking(
    fragmented: Callable[..., tuple[PoolHandle, OperatorProcess]],
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, namespace: str,
) -> None:  # fmt: skip
    pool, operator = fragmented("on")
    create_dsd(custom, namespace, "r1", R1)
    wait_for(lambda: get_dsd(custom, namespace, "small")["status"].get("moves"), 60, "moves in the small DSD's status")
    operator.stop(kill=True)  # crash with moves in flight
    assert_no_node_oversubscribed(core_v1, pool)
    pool, operator = fragmented("on")
    r1 = wait_phase(custom, namespace, "r1", "Ready", 180)
    assert len(placed_nodes(r1)[0]) == 2
    small = wait_phase(custom, namespace, "small", "Ready", 60)
    assert len(small["status"]["placements"]) == 2  # each moved replica once: no copy left behind
    assert_no_node_oversubscribed(core_v1, pool)
