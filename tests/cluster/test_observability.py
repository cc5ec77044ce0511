"""Alerts and dashboards proven on a real Prometheus (built from its pinned Go module by e2e/tools.py).

- ``promtool check rules`` and ``promtool test rules`` on the chart's rules file;
- the operator runs on a simulated pool with several DSDs; Prometheus scrapes it, and a fixture exporter
  that serves, for dspool's (fake) serving pods, series with the names and labels current vLLM, MindIE,
  DCGM exporter and Ascend npu-exporter emit. Then every panel query of the shipped dashboards and every
  alert expression is evaluated through Prometheus' HTTP API: each parses, each panel returns data, and
  the numbers agree with ``dspool pool`` and with the placement engine (placeable R1 replicas are placed).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, OperatorProcess, wait_for
from kubernetes import client
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from test_chart import TOOLS
from test_operator import create_dsd, get_dsd, wait_phase

from dspool import api
from dspool.catalog import builtin_catalog
from dspool.sim.fleet import PoolHandle

RULES = REPO_ROOT / "charts" / "dspool" / "rules" / "dspool.rules.yaml"
RULE_TESTS = REPO_ROOT / "tests" / "prometheus" / "dspool.rules.test.yaml"
DASHBOARDS = REPO_ROOT / "charts" / "dspool" / "dashboards"
RATE_WINDOW = "20s"
SCRAPE_SECONDS = 1


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = str(TOOLS.binary("promtool"))
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EngineAndDeviceFixtures(Collector):
    """Series of the exporters dspool's dashboards join, for the serving pods of one namespace.

    Names, types and labels as the exporters emit them (docs/observability.md): vLLM (``model_name``,
    ``engine``), MindIE (``model_name``; histograms and ``_total`` counters), DCGM exporter with pod mapping
    (``gpu``, ``UUID``, ``modelName``, ``Hostname``, ``pod``, ``namespace``, ``container``) and the Ascend
    npu-exporter (``id``, ``model_name``, ``vdie_id``, ``pcie_bus_info``, ``namespace``, ``pod_name``,
    ``container_name``). The ``namespace``/``pod`` labels are what a PodMonitor (engines) or a
    ServiceMonitor with honorLabels (exporters) gives.
    """

    def __init__(self, core_v1: client.CoreV1Api, namespace: str) -> None:
        self.core_v1 = core_v1
        self.namespace = namespace
        self.started = time.monotonic()
        self.random = random.Random(7)

    def _pods(self) -> list[client.V1Pod]:
        pods = self.core_v1.list_namespaced_pod(self.namespace, label_selector=api.DEPLOYMENT_LABEL).items
        return [p for p in pods if p.spec.node_name and p.metadata.deletion_timestamp is None]

    def collect(self) -> Iterator[Metric]:
        elapsed = time.monotonic() - self.started
        gauges: dict[str, GaugeMetricFamily] = {}
        counters: dict[str, CounterMetricFamily] = {}
        histograms: dict[str, HistogramMetricFamily] = {}

        def gauge(name: str, labels: dict[str, str], value: float) -> None:
            family = gauges.setdefault(name, GaugeMetricFamily(name, name, labels=list(labels)))
            family.add_metric(list(labels.values()), value)

        def counter(name: str, labels: dict[str, str], value: float) -> None:
            family = counters.setdefault(name, CounterMetricFamily(name, name, labels=list(labels)))
            family.add_metric(list(labels.values()), value)

        def histogram(name: str, labels: dict[str, str], typical: float) -> None:
            family = histograms.setdefault(name, HistogramMetricFamily(name, name, labels=list(labels)))
            count = int(elapsed * 5) + 1
            bounds = [typical / 4, typical / 2, typical, typical * 2, typical * 4]
            shares = [0.05, 0.3, 0.7, 0.95, 1.0]
            buckets = [(f"{b:g}", int(count * s)) for b, s in zip(bounds, shares, strict=True)] + [("+Inf", count)]
            family.add_metric(list(labels.values()), buckets, sum_value=count * typical)

        for pod in self._pods():
            labels = pod.metadata.labels or {}
            model = labels.get("app.kubernetes.io/name", "")
            where = {"namespace": self.namespace, "pod": pod.metadata.name}
            annotations = pod.metadata.annotations or {}
            leader = annotations.get("prometheus.io/scrape") == "true"
            resources = pod.spec.containers[0].resources.requests or {}
            ascend = any(key.startswith("huawei.com/") for key in resources)
            devices = int(next((v for k, v in resources.items() if "/" in k), 1))
            mindie = ascend and annotations.get("prometheus.io/port") == "1027"
            if leader and mindie:
                engine = {**where, "model_name": model}
                gauge("num_requests_running", engine, 3)
                gauge("num_requests_waiting", engine, 1)
                gauge("npu_cache_usage_perc", engine, 0.42)
                counter("prompt_tokens", engine, 900 * elapsed)
                counter("generation_tokens", engine, 300 * elapsed)
                histogram("time_to_first_token_seconds", engine, 0.4)
                histogram("time_per_output_token_seconds", engine, 0.05)
                histogram("e2e_request_latency_seconds", engine, 8)
            elif leader:
                engine = {**where, "model_name": model, "engine": "0"}
                gauge("vllm:num_requests_running", engine, 5)
                gauge("vllm:num_requests_waiting", engine, 2)
                gauge("vllm:kv_cache_usage_perc", engine, 0.61)
                counter("vllm:prompt_tokens", engine, 1200 * elapsed)
                counter("vllm:generation_tokens", engine, 400 * elapsed)
                histogram("vllm:time_to_first_token_seconds", engine, 0.25)
                histogram("vllm:inter_token_latency_seconds", engine, 0.03)
                histogram("vllm:e2e_request_latency_seconds", engine, 6)
            for index in range(devices):
                if ascend:
                    chip = {"id": str(index), "model_name": "Ascend910B3", "vdie_id": "",
                            "pcie_bus_info": f"0000:c{index}:00.0", "namespace": self.namespace,
                            "pod_name": pod.metadata.name, "container_name": "engine"}  # fmt: skip
                    gauge("npu_chip_info_utilization", chip, 70 + index)
                    gauge("npu_chip_info_hbm_used_memory", chip, 52000)
                    gauge("npu_chip_info_hbm_total_memory", chip, 65536)
                else:
                    gpu = {"gpu": str(index), "UUID": f"GPU-{pod.metadata.name}-{index}", "modelName": "NVIDIA H100",
                           "Hostname": pod.spec.node_name, **where, "container": "engine"}  # fmt: skip
                    gauge("DCGM_FI_DEV_GPU_UTIL", gpu, 80 + index)
                    gauge("DCGM_FI_DEV_FB_USED", gpu, 70000)
                    gauge("DCGM_FI_DEV_FB_FREE", gpu, 11000)
        yield from gauges.values()
        yield from counters.values()
        yield from histograms.values()


class Prometheus:
    """A real Prometheus scraping the operator and the fixtures every second."""

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [str(TOOLS.binary("prometheus")), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; fails the test on a parse or evaluation error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            pytest.fail(f"Prometheus refused {expr!r}: {error.read().decode()}")
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        """The single value of a query."""
        [sample] = self.query(expr)
        return float(sample["value"][1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every target of every shipped dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                found.append((dashboard["uid"], panel["title"], target["expr"]))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def substitute(expr: str, namespace: str) -> str:
    """The query Grafana sends with the dashboard's variables at 'All' (namespace: this test's)."""
    return (
        expr.replace("$__rate_interval", RATE_WINDOW)
        .replace("$namespace", namespace)
        .replace("$deployment", ".*")
        .replace("$accelerator", ".*")
    )


@pytest.fixture
def monitored(
    kubeconfig: str, namespace: str, fake_pool: Callable[[str], PoolHandle], core_v1: client.CoreV1Api,
    tmp_path: Path, crd_installed: None,
) -> Iterator[tuple[PoolHandle, OperatorProcess, Prometheus]]:  # fmt: skip
    """The enterprise pool, an operator on it with several DSDs, fixtures and Prometheus scraping both."""
    pool = fake_pool("enterprise-mixed.yaml")
    operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / "operator.log")
    operator.start()
    registry = CollectorRegistry()
    registry.register(EngineAndDeviceFixtures(core_v1, namespace))
    fixtures_port = free_port()
    server, _thread = start_http_server(fixtures_port, addr="127.0.0.1", registry=registry)
    prometheus = Prometheus(tmp_path, {"dspool": operator.metrics_port, "exporters": fixtures_port})
    try:
        yield pool, operator, prometheus
    finally:
        prometheus.stop()
        server.shutdown()
        operator.stop()


DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "r1": {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H200-141G"]}},
    "r1-ascend": {"model": "deepseek-r1", "precision": "w8a8", "placement": {"acceleratorTypes": ["Ascend910B3"]}},
    "r1-ampere": {"model": "deepseek-r1", "replicas": 2, "placement": {"acceleratorTypes": ["A100-80G"]}},
    "qwen-1-5b": {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 3},
    "llama-70b": {"model": "deepseek-r1-distill-llama-70b"},
}


def test_every_panel_and_alert_query_runs_on_a_real_prometheus_and_agrees_with_dspool(
    monitored: tuple[PoolHandle, OperatorProcess, Prometheus], api_client: client.ApiClient,
    kubeconfig: str, namespace: str,
) -> None:  # fmt: skip
    pool, _operator, prometheus = monitored
    custom = client.CustomObjectsApi(api_client)
    for name, spec in DEPLOYMENTS.items():
        create_dsd(custom, namespace, name, spec)
    for name in ("r1", "r1-ascend", "qwen-1-5b", "llama-70b"):
        wait_phase(custom, namespace, name, "Ready", 120)
    wait_phase(custom, namespace, "r1-ampere", "Degraded", 60)  # 2 x 2 A100 nodes asked, 3 in the pool

    def scraped() -> bool:
        infos = prometheus.query(f'dspool_replica_info{{namespace="{namespace}"}}')
        engines = prometheus.query(f'vllm:num_requests_running{{namespace="{namespace}"}}')
        mindie = prometheus.query(f'num_requests_running{{namespace="{namespace}"}}')
        return len(infos) >= 8 and len(engines) >= 5 and len(mindie) >= 1

    wait_for(scraped, 90, "Prometheus to scrape the operator and the fixtures")
    time.sleep(25)  # enough samples for rate() and histogram_quantile() over the rate window

    empty = []
    for uid, title, expr in panel_queries():
        if not prometheus.query(substitute(expr, namespace)):
            empty.append(f"{uid} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for _alert, expr in alert_expressions():
        prometheus.query(expr)  # parses and evaluates (whether it fires depends on the pool)

    # The numbers agree with `dspool pool` ...
    selector = f"dspool.io/pool={pool.name}"
    shown = subprocess.run(
        [sys.executable, "-m", "dspool", "pool", "--kubeconfig", kubeconfig, "--node-selector", selector, "-o", "json"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    totals = json.loads(shown.stdout)["totals"]

    def agrees() -> bool:
        scraped_free = {
            s["metric"]["accelerator"]: int(float(s["value"][1]))
            for s in prometheus.query('dspool_pool_devices{state="free"}')
        }
        return scraped_free == {accelerator: t["free"] for accelerator, t in totals.items()}

    wait_for(agrees, 30, "free devices per type in Prometheus to equal `dspool pool`")
    assert (
        prometheus.value(f'dspool_deployment_pending_replicas{{namespace="{namespace}", deployment="r1-ampere"}}') == 1
    )
    # leader and worker of the Ascend gang (llama-70b may be on Ascend too: where it goes depends on whether it
    # is decided before or after the R1s, i.e. on whether they were created in the same second)
    assert prometheus.value('count(dspool_replica_info{backend="mindie", deployment="r1-ascend"})') == 2

    # ... and with the engine: as many more R1 replicas as the metric says are really placed.
    placeable = int(prometheus.value('dspool_pool_placeable_replicas{model="deepseek-r1", accelerator="all"}'))
    assert placeable >= 1
    create_dsd(custom, namespace, "r1-more", {"model": "deepseek-r1", "replicas": placeable})

    def placed_more() -> dict[str, Any] | None:
        dsd = get_dsd(custom, namespace, "r1-more")
        return dsd if len((dsd.get("status") or {}).get("placements", [])) == placeable else None

    wait_for(placed_more, 90, f"all {placeable} placeable R1 replicas to be placed")
    custom.patch_namespaced_custom_object_scale(api.GROUP, api.VERSION, namespace, api.PLURAL, "r1-more",
                                                {"spec": {"replicas": placeable + 1}})  # fmt: skip
    one_more = wait_phase(custom, namespace, "r1-more", "Degraded", 60)
    assert len(one_more["status"]["placements"]) == placeable  # the next one does not fit
    wait_for(
        lambda: prometheus.value('dspool_pool_placeable_replicas{model="deepseek-r1", accelerator="all"}') == 0,
        30, "the metric to say no further R1 fits",
    )  # fmt: skip
    assert builtin_catalog().model("deepseek-r1")  # the metric covers catalog models
