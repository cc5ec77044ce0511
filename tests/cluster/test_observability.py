"""Alerts and dashboards proven on a real Prometheus (built from its pinned Go module by e2e/tools.py).

- ``promtool check rules`` and ``promtool test rules`` on the chart's rules file;
- two operators (one holds the Lease, one stands by) run on a simulated pool with several DSDs. Prometheus
  scrapes them with the scrape configuration prometheus-operator generates from the chart's own rendered
  ServiceMonitor (target labels ``namespace``/``pod``/``service``/``endpoint``/``container`` of the operator
  pod added, ``honor_labels`` only if the object says so: tests/cluster/prometheus_operator.py), the engines
  of dspool's (fake) serving pods through the chart's PodMonitor (one fixture endpoint per pod, serving the
  series vLLM and MindIE emit, without namespace or pod labels, as the engines do), and a fixture exporter
  with the DCGM exporter and Ascend npu-exporter series (``honor_labels``, as their own ServiceMonitors set).
  Then every panel query of the shipped dashboards and every alert expression is evaluated through
  Prometheus' HTTP API: each parses, each panel returns data, the KV-cache alert fires for the DSD whose
  fixture engines are full, no series is exported twice, and the numbers agree with ``dspool pool`` and with
  the placement engine (placeable R1 replicas are placed).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, OperatorProcess, wait_for
from kubernetes import client
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_operator import (
    pod_monitor_scrape_configs,
    pod_targets,
    service_endpoint_target,
    service_monitor_scrape_configs,
    write_targets,
)
from test_chart import CHART, TOOLS
from test_operator import create_dsd, get_dsd, wait_phase

from dspool import api
from dspool.catalog import builtin_catalog
from dspool.sim.fleet import PoolHandle

RULES = REPO_ROOT / "charts" / "dspool" / "rules" / "dspool.rules.yaml"
RULE_TESTS = REPO_ROOT / "tests" / "prometheus" / "dspool.rules.test.yaml"
DASHBOARDS = REPO_ROOT / "charts" / "dspool" / "dashboards"
RATE_WINDOW = "20s"
SCRAPE_SECONDS = 1
RELEASE_NAMESPACE = "dspool-system"  # the operator pods' namespace: not the DSDs'
SATURATED_DEPLOYMENT = "qwen-1-5b"  # its fixture engines report a full KV cache


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = str(TOOLS.binary("promtool"))
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = yaml.safe_load(RULES.read_text())
    assert f"SUCCESS: {sum(len(group['rules']) for group in rules['groups'])} rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Families:
    """Gauges, counters and histograms under construction, by name."""

    def __init__(self, elapsed: float) -> None:
        self.elapsed = elapsed
        self.gauges: dict[str, GaugeMetricFamily] = {}
        self.counters: dict[str, CounterMetricFamily] = {}
        self.histograms: dict[str, HistogramMetricFamily] = {}

    def gauge(self, name: str, labels: dict[str, str], value: float) -> None:
        family = self.gauges.setdefault(name, GaugeMetricFamily(name, name, labels=list(labels)))
        family.add_metric(list(labels.values()), value)

    def counter(self, name: str, labels: dict[str, str], value: float) -> None:
        family = self.counters.setdefault(name, CounterMetricFamily(name, name, labels=list(labels)))
        family.add_metric(list(labels.values()), value)

    def histogram(self, name: str, labels: dict[str, str], typical: float) -> None:
        family = self.histograms.setdefault(name, HistogramMetricFamily(name, name, labels=list(labels)))
        count = int(self.elapsed * 5) + 1
        bounds = [typical / 4, typical / 2, typical, typical * 2, typical * 4]
        shares = [0.05, 0.3, 0.7, 0.95, 1.0]
        buckets = [(f"{b:g}", int(count * s)) for b, s in zip(bounds, shares, strict=True)] + [("+Inf", count)]
        family.add_metric(list(labels.values()), buckets, sum_value=count * typical)

    def all(self) -> Iterator[Metric]:
        yield from self.gauges.values()
        yield from self.counters.values()
        yield from self.histograms.values()


def _is_mindie(pod: client.V1Pod) -> bool:
    resources = pod.spec.containers[0].resources.requests or {}
    ascend = any(key.startswith("huawei.com/") for key in resources)
    return ascend and (pod.metadata.annotations or {}).get("prometheus.io/port") == "1027"


class EngineFixture(Collector):
    """What one serving pod's engine serves at /metrics: vLLM's or MindIE's series, names, types and labels
    as they emit them (vLLM ``model_name``, ``engine``; MindIE ``model_name``), no namespace or pod label
    (the PodMonitor's target labels add them)."""

    def __init__(self, pod: client.V1Pod) -> None:
        self.model = (pod.metadata.labels or {}).get("app.kubernetes.io/name", "")
        self.mindie = _is_mindie(pod)
        self.kv_cache = 0.95 if (pod.metadata.labels or {}).get(api.DEPLOYMENT_LABEL) == SATURATED_DEPLOYMENT else 0.6
        self.started = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        elapsed = time.monotonic() - self.started
        out = Families(elapsed)
        if self.mindie:
            engine = {"model_name": self.model}
            out.gauge("num_requests_running", engine, 3)
            out.gauge("num_requests_waiting", engine, 1)
            out.gauge("npu_cache_usage_perc", engine, self.kv_cache)
            out.counter("prompt_tokens", engine, 900 * elapsed)
            out.counter("generation_tokens", engine, 300 * elapsed)
            out.histogram("time_to_first_token_seconds", engine, 0.4)
            out.histogram("time_per_output_token_seconds", engine, 0.05)
            out.histogram("e2e_request_latency_seconds", engine, 8)
        else:
            engine = {"model_name": self.model, "engine": "0"}
            out.gauge("vllm:num_requests_running", engine, 5)
            out.gauge("vllm:num_requests_waiting", engine, 2)
            out.gauge("vllm:kv_cache_usage_perc", engine, self.kv_cache)
            out.counter("vllm:prompt_tokens", engine, 1200 * elapsed)
            out.counter("vllm:generation_tokens", engine, 400 * elapsed)
            out.histogram("vllm:time_to_first_token_seconds", engine, 0.25)
            out.histogram("vllm:inter_token_latency_seconds", engine, 0.03)
            out.histogram("vllm:e2e_request_latency_seconds", engine, 6)
        yield from out.all()


class DeviceFixtures(Collector):
    """Series of the device exporters dspool's dashboards join, for the serving pods of one namespace.

    DCGM exporter with pod mapping (``gpu``, ``UUID``, ``modelName``, ``Hostname``, ``pod``, ``namespace``,
    ``container``) and the Ascend npu-exporter (``id``, ``model_name``, ``vdie_id``, ``pcie_bus_info``,
    ``namespace``, ``pod_name``, ``container_name``): the namespace/pod labels are the workload's, which their
    ServiceMonitors keep with honorLabels (docs/observability.md).
    """

    def __init__(self, core_v1: client.CoreV1Api, namespace: str) -> None:
        self.core_v1 = core_v1
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        out = Families(0)
        for pod in serving_pods(self.core_v1, self.namespace):
            resources = pod.spec.containers[0].resources.requests or {}
            ascend = any(key.startswith("huawei.com/") for key in resources)
            devices = int(next((v for k, v in resources.items() if "/" in k), 1))
            for index in range(devices):
                if ascend:
                    chip = {"id": str(index), "model_name": "Ascend910B3", "vdie_id": "",
                            "pcie_bus_info": f"0000:c{index}:00.0", "namespace": self.namespace,
                            "pod_name": pod.metadata.name, "container_name": "engine"}  # fmt: skip
                    out.gauge("npu_chip_info_utilization", chip, 70 + index)
                    out.gauge("npu_chip_info_hbm_used_memory", chip, 52000)
                    out.gauge("npu_chip_info_hbm_total_memory", chip, 65536)
                else:
                    gpu = {"gpu": str(index), "UUID": f"GPU-{pod.metadata.name}-{index}", "modelName": "NVIDIA H100",
                           "Hostname": pod.spec.node_name, "namespace": self.namespace, "pod": pod.metadata.name,
                           "container": "engine"}  # fmt: skip
                    out.gauge("DCGM_FI_DEV_GPU_UTIL", gpu, 80 + index)
                    out.gauge("DCGM_FI_DEV_FB_USED", gpu, 70000)
                    out.gauge("DCGM_FI_DEV_FB_FREE", gpu, 11000)
        yield from out.all()


def serving_pods(core_v1: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    """dspool's pods in the namespace that are bound and not being deleted."""
    pods = core_v1.list_namespaced_pod(namespace, label_selector=api.DEPLOYMENT_LABEL).items
    return [p for p in pods if p.spec.node_name and p.metadata.deletion_timestamp is None]


class EngineEndpoints:
    """One fixture /metrics endpoint per serving pod, published as pod-discovery targets (every declared
    container port of the real pod, its labels and annotations) for the chart's PodMonitor to select from."""

    def __init__(self, core_v1: client.CoreV1Api, namespace: str, targets_file: Path) -> None:
        self.core_v1 = core_v1
        self.namespace = namespace
        self.targets_file = targets_file
        self.servers: dict[str, tuple[int, Any]] = {}
        write_targets(targets_file, [])

    def refresh(self) -> None:
        """Start endpoints for new pods and rewrite the targets file."""
        groups = []
        api_client = self.core_v1.api_client
        for pod in serving_pods(self.core_v1, self.namespace):
            name = pod.metadata.name
            if name not in self.servers:
                registry = CollectorRegistry()
                registry.register(EngineFixture(pod))
                port = free_port()
                server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
                self.servers[name] = (port, server)
            groups += pod_targets(f"127.0.0.1:{self.servers[name][0]}", api_client.sanitize_for_serialization(pod))
        write_targets(self.targets_file, groups)

    def stop(self) -> None:
        for _port, server in self.servers.values():
            server.shutdown()


def chart_monitors() -> dict[str, dict[str, Any]]:
    """The Service, ServiceMonitor and PodMonitor the chart renders with monitoring on (scraping every second)."""
    values = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
              "--set", f"monitoring.serviceMonitor.interval={SCRAPE_SECONDS}s",
              "--set", f"monitoring.podMonitor.interval={SCRAPE_SECONDS}s"]  # fmt: skip
    done = subprocess.run([str(TOOLS.binary("helm")), "template", "dspool", str(CHART), "-n", RELEASE_NAMESPACE,
                           *values], capture_output=True, text=True, check=True)  # fmt: skip
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    return {kind: next(o for o in objects if o["kind"] == kind) for kind in ("Service", "ServiceMonitor", "PodMonitor")}


def rules_without_delays(tmp_path: Path) -> Path:
    """The chart's rules with every ``for`` at 0s: the firing conditions are promtool-tested with their
    delays; here they run against live series, which cannot wait 15 minutes."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    path = tmp_path / "dspool.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Prometheus:
    """A real Prometheus with the given scrape configurations and the chart's alerts."""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], rules: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(rules)],
            "scrape_configs": scrape_configs,
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


@dataclass
class Monitored:
    """The pool, both operators, the engine endpoints and Prometheus."""

    pool: PoolHandle
    operators: list[OperatorProcess]
    engines: EngineEndpoints
    prometheus: Prometheus


@pytest.fixture
def monitored(
    kubeconfig: str, namespace: str, fake_pool: Callable[[str], PoolHandle], core_v1: client.CoreV1Api,
    tmp_path: Path, crd_installed: None,
) -> Iterator[Monitored]:  # fmt: skip
    """The enterprise pool, two operators on it (one leads, one stands by), the engines' and device exporters'
    fixtures, and Prometheus scraping them through the chart's ServiceMonitor and PodMonitor."""
    pool = fake_pool("enterprise-mixed.yaml")
    operators = [OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / f"operator-{i}.log") for i in (0, 1)]
    for operator in operators:
        operator.start()
    monitors = chart_monitors()
    operator_targets = tmp_path / "operator-targets.json"
    write_targets(operator_targets, [
        service_endpoint_target(f"127.0.0.1:{operator.metrics_port}", monitors["Service"], "metrics",
                                f"dspool-7d4f9c6b8-{suffix}", "operator")
        for operator, suffix in zip(operators, ("x2k9p", "q7w3z"), strict=True)
    ])  # fmt: skip
    engines = EngineEndpoints(core_v1, namespace, tmp_path / "engine-targets.json")
    registry = CollectorRegistry()
    registry.register(DeviceFixtures(core_v1, namespace))
    devices_port = free_port()
    server, _thread = start_http_server(devices_port, addr="127.0.0.1", registry=registry)
    scrape_configs = [
        *service_monitor_scrape_configs(monitors["ServiceMonitor"], operator_targets),
        *pod_monitor_scrape_configs(monitors["PodMonitor"], engines.targets_file),
        {"job_name": "device-exporters", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{devices_port}"]}]},
    ]  # fmt: skip
    prometheus = Prometheus(tmp_path, scrape_configs, rules_without_delays(tmp_path))
    try:
        yield Monitored(pool, operators, engines, prometheus)
    finally:
        prometheus.stop()
        server.shutdown()
        engines.stop()
        for operator in operators:
            operator.stop()


DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "r1": {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H200-141G"]}},
    "r1-ascend": {"model": "deepseek-r1", "precision": "w8a8", "placement": {"acceleratorTypes": ["Ascend910B3"]}},
    "r1-ampere": {"model": "deepseek-r1", "replicas": 2, "placement": {"acceleratorTypes": ["A100-80G"]}},
    "qwen-1-5b": {"model": "deepseek-r1-distill-qwen-1.5b", "replicas": 3},
    "llama-70b": {"model": "deepseek-r1-distill-llama-70b"},
}


def test_every_panel_and_alert_query_runs_on_a_real_prometheus_and_agrees_with_dspool(
    monitored: Monitored, api_client: client.ApiClient, kubeconfig: str, namespace: str,
) -> None:  # fmt: skip
    pool, prometheus = monitored.pool, monitored.prometheus
    custom = client.CustomObjectsApi(api_client)
    for name, spec in DEPLOYMENTS.items():
        create_dsd(custom, namespace, name, spec)
    for name in ("r1", "r1-ascend", "qwen-1-5b", "llama-70b"):
        wait_phase(custom, namespace, name, "Ready", 120)
    wait_phase(custom, namespace, "r1-ampere", "Degraded", 60)  # 2 x 2 A100 nodes asked, 3 in the pool

    seen: dict[str, Any] = {}

    def scraped() -> bool:
        monitored.engines.refresh()
        # dspool's own namespace/pod labels survive the chart's ServiceMonitor (honorLabels): the DSDs'
        # namespace, not the operator pod's
        infos = prometheus.query(f'dspool_replica_info{{namespace="{namespace}"}}')
        engines = prometheus.query(f'vllm:num_requests_running{{namespace="{namespace}"}}')
        mindie = prometheus.query(f'num_requests_running{{namespace="{namespace}"}}')
        seen.update(infos=len(infos), engines=len(engines), mindie=len(mindie))
        return len(infos) >= 8 and len(engines) >= 5 and len(mindie) >= 1

    try:
        wait_for(scraped, 90, "Prometheus to scrape the operators and the fixtures through the chart's monitors")
    except pytest.fail.Exception:
        targets = {(s["metric"]["job"], s["metric"].get("instance")): s["value"][1] for s in prometheus.query("up")}
        pytest.fail(f"not scraped in 90 s: series seen {seen} (need 8 infos, 5 vLLM, 1 MindIE); up: {targets}")
    time.sleep(25)  # enough samples for rate() and histogram_quantile() over the rate window

    # Two operators, one series per DSD: the standby exports its leadership only, and so does a leader that
    # lost the Lease (frozen past the Lease's duration while the standby took over, then thawed): its last
    # pass must not stay on display next to the new leader's.
    assert prometheus.value("count(dspool_leader)") == 2 and prometheus.value("sum(dspool_leader)") == 1
    leader, standby = sorted(monitored.operators, key=lambda o: "dspool_leader 1.0" not in o.metrics())
    assert leader.process is not None
    leader.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: "dspool_leader 1.0" in standby.metrics(), 60, "the standby to take the Lease")
    finally:
        leader.process.send_signal(signal.SIGCONT)
    wait_for(lambda: "dspool_leader 0.0" in leader.metrics(), 30, "the old leader to notice it lost the Lease")
    assert "dspool_deployment_replicas{" not in leader.metrics()
    wait_for(lambda: prometheus.value("count(dspool_leader)") == 2, 30, "Prometheus to scrape both again")
    time.sleep(3 * SCRAPE_SECONDS)
    assert prometheus.value("sum(dspool_leader)") == 1
    duplicated = prometheus.query("count by (namespace, deployment, state) (dspool_deployment_replicas) > 1")
    assert not duplicated, duplicated
    assert not prometheus.query("count by (namespace, pod) (dspool_replica_info) > 1")
    assert not prometheus.query('{exported_namespace!=""} or {exported_pod!=""}'), "target labels overwrote dspool's"
    [leader_target] = prometheus.query("dspool_leader == 1")
    assert leader_target["metric"]["namespace"] == RELEASE_NAMESPACE  # the target labels, where the series has none
    assert leader_target["metric"]["service"] == "dspool-metrics" and leader_target["metric"]["endpoint"] == "metrics"

    empty = []
    for uid, title, expr in panel_queries():
        if not prometheus.query(substitute(expr, namespace)):
            empty.append(f"{uid} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for _alert, expr in alert_expressions():
        prometheus.query(expr)  # parses and evaluates (whether it fires depends on the pool)

    # The KV-cache alert fires for the DSD whose engines are full, with the DSD's namespace.
    def kv_cache_alert() -> list[dict[str, Any]]:
        return prometheus.query('ALERTS{alertname="DspoolKVCacheSaturated", alertstate="firing"}')

    [alert] = wait_for(kv_cache_alert, 30, "DspoolKVCacheSaturated to fire")
    assert (alert["metric"]["namespace"], alert["metric"]["deployment"]) == (namespace, SATURATED_DEPLOYMENT)

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
