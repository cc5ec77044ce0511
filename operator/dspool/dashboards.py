"""dspool's Grafana dashboards, as plain data: Pool, Deployments, Devices, Operator.

Why plain data and not a generator library: the dashboards use four panel types and a handful of options;
a pinned SDK (grafana-foundation-sdk) would add a dependency with an epoch-versioned release line for
what fits in one page of dicts, as vLLM's own ``tools/generate_grafana_dashboards.py`` does. The
checks an SDK would give are done here and in the tests: :func:`check` fails on a metric that neither
dspool (``dspool.metrics.METRIC_NAMES``) nor a known exporter defines, on an undefined template
variable and on overlapping panels; ``tests/cluster/test_observability.py`` runs every query on a real
Prometheus.

``python -m dspool.chartgen charts/dspool`` (``make crds``) writes one JSON file per dashboard to
``charts/dspool/dashboards/``; the chart turns them into ConfigMaps for the Grafana sidecar.

Joins: ``dspool_replica_info{namespace,pod,deployment,replica,node,accelerator,backend}`` is 1 for every
serving pod, so ``<exporter series> * on(namespace, pod) group_left(deployment, replica) dspool_replica_info``
puts a DSD on engine (vLLM, MindIE) and device (DCGM, npu-exporter) series. The npu-exporter names the
pod ``pod_name``; ``label_replace`` copies it to ``pod``. Exporters scraped through a ServiceMonitor need
``honorLabels: true`` so their ``namespace``/``pod`` labels are the workload's, not the exporter's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dspool.metrics import METRIC_NAMES

# Series the engine and device panels read, as current exporters emit them (docs/observability.md).
VLLM_METRICS = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    }
)
MINDIE_METRICS = frozenset(
    {
        "num_requests_running",
        "num_requests_waiting",
        "npu_cache_usage_perc",
        "time_to_first_token_seconds_bucket",
        "time_per_output_token_seconds_bucket",
        "e2e_request_latency_seconds_bucket",
        "prompt_tokens_total",
        "generation_tokens_total",
    }
)
DCGM_METRICS = frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"})
NPU_EXPORTER_METRICS = frozenset(
    {"npu_chip_info_utilization", "npu_chip_info_hbm_used_memory", "npu_chip_info_hbm_total_memory"}
)
EXPORTER_METRICS = VLLM_METRICS | MINDIE_METRICS | DCGM_METRICS | NPU_EXPORTER_METRICS
KNOWN_METRICS = (
    METRIC_NAMES
    | EXPORTER_METRICS
    | {f"{name}_{suffix}" for name in METRIC_NAMES for suffix in ("bucket", "count", "sum")}
)

GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DSD = 'namespace=~"$namespace", deployment=~"$deployment"'
JOIN = "* on(namespace, pod) group_left(deployment, replica)"
REPLICAS = f"dspool_replica_info{{{DSD}}}"


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: ``source`` says where its series come from (dspool, engine or device exporters)."""

    title: str
    description: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat | table | bargauge
    unit: str = "short"
    width: int = 12
    height: int = 8
    source: str = "dspool"  # dspool | engine | devices
    stacked: bool = False
    # (warning, critical) values: the panel turns orange, then red (lines on time series). The critical value
    # is the threshold of the alert watching the same quantity (tests/unit/test_dashboards.py holds them equal).
    thresholds: tuple[float, float] | None = None


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: its uid is also the file name."""

    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[str, ...] = ()  # of: accelerator, namespace, deployment
    tags: tuple[str, ...] = field(default=("dspool",))


def _engine(vllm: str, mindie: str) -> str:
    """vLLM's series or MindIE's equivalent: a pod runs one engine, so `or` never mixes them."""
    return f"({vllm} or {mindie})"


def _rate(vllm_counter: str, mindie_counter: str) -> str:
    """The per-second rate of vLLM's counter or MindIE's (rate() takes one selector, so two rates)."""
    return _engine(f"rate({vllm_counter}[$__rate_interval])", f"rate({mindie_counter}[$__rate_interval])")


def _quantile(q: float, vllm_bucket: str, mindie_bucket: str) -> str:
    rate = _rate(vllm_bucket, mindie_bucket)
    return f"histogram_quantile({q}, sum by (le, deployment) ({rate} {JOIN} {REPLICAS}))"


POOL = Dashboard(
    uid="dspool-pool",
    title="dspool / Pool",
    description="How full each accelerator type is, what still fits, and what waits.",
    variables=("accelerator",),
    panels=(
        Panel(
            "Placeable replicas now",
            "How many more replicas of each catalog model (default sizing) the placement engine would place "
            "right now, over every accelerator type: 'R1 fits 3 more times'.",
            (Query('dspool_pool_placeable_replicas{accelerator="all"}', "{{model}}"),),
            kind="bargauge",
            width=12,
        ),
        Panel(
            "Placeable replicas by accelerator",
            "Further replicas per model and accelerator type (types where the model fits).",
            (Query('dspool_pool_placeable_replicas{accelerator!="all", accelerator=~"$accelerator"}', ""),),
            kind="table",
            width=12,
        ),
        Panel(
            "Devices by state",
            "Devices of the selected accelerator types: used by other pods, reserved by dspool, free.",
            (
                Query(
                    'sum by (state) (dspool_pool_devices{state!="allocatable", accelerator=~"$accelerator"})',
                    "{{state}}",
                ),
            ),
            stacked=True,
        ),
        Panel(
            "Allocation by accelerator",
            "Share of each type's devices that are used or reserved.",
            (
                Query(
                    'sum by (accelerator) (dspool_pool_devices{state=~"used|reserved", accelerator=~"$accelerator"})'
                    ' / sum by (accelerator) (dspool_pool_devices{state="allocatable", accelerator=~"$accelerator"})',
                    "{{accelerator}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Whole free nodes",
            "Nodes with every device free, per type: what whole-node and multi-node replicas need.",
            (Query('dspool_pool_whole_free_nodes{accelerator=~"$accelerator"}', "{{accelerator}}"),),
            kind="bargauge",
            width=8,
        ),
        Panel(
            "Stranded devices",
            "Free devices that no replica of the current demand mix can use on the node they are on. High while "
            "replicas wait: rebalancing would help.",
            (Query('dspool_pool_stranded_devices{accelerator=~"$accelerator"}', "{{accelerator}}"),),
            width=8,
        ),
        Panel(
            "Fragmentation",
            "Share of free devices on partly used nodes.",
            (Query('dspool_pool_fragmentation_ratio{accelerator=~"$accelerator"}', "{{accelerator}}"),),
            unit="percentunit",
            width=8,
        ),
        Panel(
            "Pending replicas",
            "Replicas asked for but not placed, per DeepSeekDeployment, and how long each has waited.",
            (
                Query("dspool_deployment_pending_replicas", "{{namespace}}/{{deployment}}"),
                Query("dspool_deployment_pending_seconds", "{{namespace}}/{{deployment}} waited"),
            ),
            kind="table",
            width=12,
        ),
        Panel(
            "Longest wait",
            "The longest any DeepSeekDeployment has waited for room.",
            (Query("max(dspool_deployment_pending_seconds)", "longest wait"),),
            kind="stat",
            unit="s",
            width=12,
            thresholds=(300, 600),  # DspoolReplicasUnschedulable: 10 minutes
        ),
        Panel(
            "Per-node allocation",
            "Devices of every node by state (needs dspool run --node-metrics, the default).",
            (Query('dspool_node_devices{accelerator=~"$accelerator"}', ""),),
            kind="table",
            width=24,
            height=10,
        ),
        Panel(
            "Model cache: nodes per entry",
            "Nodes whose model cache holds each checkpoint, by state (Ready, Fetching, Failed, Missing); needs dspool "
            "run --model-cache. 0 when no cache is kept.",
            (Query("sum by (entry, state) (dspool_model_cache_nodes) or vector(0)", "{{entry}} {{state}}"),),
        ),
        Panel(
            "Model fetches",
            "Fetches of weights into node caches per hour, by event: started, finished, failed.",
            (Query("sum by (event) (increase(dspool_model_fetches_total[1h]))", "{{event}}"),),
        ),
    ),
)

DEPLOYMENTS = Dashboard(
    uid="dspool-deployments",
    title="dspool / Deployments",
    description="Each DeepSeekDeployment: its replicas, where they run, and its engine's load and latency.",
    variables=("namespace", "deployment"),
    panels=(
        Panel(
            "Replicas: desired, placed, ready",
            "Placed = devices reserved; ready = serving.",
            (Query(f"dspool_deployment_replicas{{{DSD}}}", "{{deployment}} {{state}}"),),
        ),
        Panel(
            "Phase",
            "The phase each DeepSeekDeployment is in.",
            (Query(f"dspool_deployment_phase{{{DSD}}} == 1", ""),),
            kind="table",
        ),
        Panel(
            "Where each replica runs",
            "Serving pods with their replica, node, accelerator and backend.",
            (Query(REPLICAS, ""),),
            kind="table",
            width=24,
        ),
        Panel(
            "Requests running",
            "Requests the engines are processing (vLLM num_requests_running, MindIE's equivalent).",
            (
                Query(
                    f"sum by (deployment) ({_engine('vllm:num_requests_running', 'num_requests_running')} "
                    f"{JOIN} {REPLICAS})",
                    "{{deployment}}",
                ),
            ),
            source="engine",
            width=8,
        ),
        Panel(
            "Requests waiting",
            "Requests queued in the engines: sustained queues mean scale out.",
            (
                Query(
                    f"sum by (deployment) ({_engine('vllm:num_requests_waiting', 'num_requests_waiting')} "
                    f"{JOIN} {REPLICAS})",
                    "{{deployment}}",
                ),
            ),
            source="engine",
            width=8,
        ),
        Panel(
            "KV-cache usage",
            "Highest KV-cache usage of a replica (vLLM kv_cache_usage_perc, MindIE npu_cache_usage_perc; 0-1).",
            (
                Query(
                    f"max by (deployment, replica) ({_engine('vllm:kv_cache_usage_perc', 'npu_cache_usage_perc')} "
                    f"{JOIN} {REPLICAS})",
                    "{{deployment}}#{{replica}}",
                ),
            ),
            unit="percentunit",
            source="engine",
            width=8,
            thresholds=(0.8, 0.9),  # DspoolKVCacheSaturated: 90%
        ),
        Panel(
            "Time to first token p50 / p99",
            "From the engines' histograms.",
            (
                Query(
                    _quantile(0.5, "vllm:time_to_first_token_seconds_bucket", "time_to_first_token_seconds_bucket"),
                    "{{deployment}} p50",
                ),
                Query(
                    _quantile(0.99, "vllm:time_to_first_token_seconds_bucket", "time_to_first_token_seconds_bucket"),
                    "{{deployment}} p99",
                ),
            ),
            unit="s",
            source="engine",
            width=8,
        ),
        Panel(
            "Inter-token latency p50 / p99",
            "vLLM inter_token_latency_seconds, MindIE time_per_output_token_seconds.",
            (
                Query(
                    _quantile(0.5, "vllm:inter_token_latency_seconds_bucket", "time_per_output_token_seconds_bucket"),
                    "{{deployment}} p50",
                ),
                Query(
                    _quantile(0.99, "vllm:inter_token_latency_seconds_bucket", "time_per_output_token_seconds_bucket"),
                    "{{deployment}} p99",
                ),
            ),
            unit="s",
            source="engine",
            width=8,
        ),
        Panel(
            "End-to-end latency p99",
            "Whole requests, from the engines' histograms.",
            (
                Query(
                    _quantile(0.99, "vllm:e2e_request_latency_seconds_bucket", "e2e_request_latency_seconds_bucket"),
                    "{{deployment}} p99",
                ),
            ),
            unit="s",
            source="engine",
            width=8,
        ),
        Panel(
            "Tokens per second",
            "Generated and prompt tokens per second.",
            (
                Query(
                    f"sum by (deployment) ({_rate('vllm:generation_tokens_total', 'generation_tokens_total')} "
                    f"{JOIN} {REPLICAS})",
                    "{{deployment}} generated",
                ),
                Query(
                    f"sum by (deployment) ({_rate('vllm:prompt_tokens_total', 'prompt_tokens_total')} "
                    f"{JOIN} {REPLICAS})",
                    "{{deployment}} prompt",
                ),
            ),
            source="engine",
            width=24,
        ),
    ),
)

_NPU_POD = 'label_replace({metric}, "pod", "$1", "pod_name", "(.+)")'
DEVICES = Dashboard(
    uid="dspool-devices",
    title="dspool / Devices",
    description="GPU and NPU utilization and memory per DeepSeekDeployment replica, NVIDIA and Ascend side by "
    "side (DCGM exporter and Ascend npu-exporter joined through dspool_replica_info).",
    variables=("namespace", "deployment"),
    panels=(
        Panel(
            "GPU utilization (DCGM)",
            "Mean DCGM_FI_DEV_GPU_UTIL of a replica's GPUs.",
            (
                Query(
                    f"avg by (deployment, replica) (DCGM_FI_DEV_GPU_UTIL {JOIN} {REPLICAS})",
                    "{{deployment}}#{{replica}}",
                ),
            ),
            unit="percent",
            source="devices",
        ),
        Panel(
            "NPU utilization (npu-exporter)",
            "Mean npu_chip_info_utilization of a replica's NPUs.",
            (
                Query(
                    f"avg by (deployment, replica) ({_NPU_POD.format(metric='npu_chip_info_utilization')} "
                    f"{JOIN} {REPLICAS})",
                    "{{deployment}}#{{replica}}",
                ),
            ),
            unit="percent",
            source="devices",
        ),
        Panel(
            "GPU memory used",
            "Share of a replica's GPU memory in use (FB used / (used + free)).",
            (
                Query(
                    f"sum by (deployment, replica) (DCGM_FI_DEV_FB_USED {JOIN} {REPLICAS}) / sum by "
                    f"(deployment, replica) ((DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) {JOIN} {REPLICAS})",
                    "{{deployment}}#{{replica}}",
                ),
            ),
            unit="percentunit",
            source="devices",
        ),
        Panel(
            "NPU HBM used",
            "Share of a replica's NPU HBM in use (hbm_used / hbm_total).",
            (
                Query(
                    f"sum by (deployment, replica) ({_NPU_POD.format(metric='npu_chip_info_hbm_used_memory')} "
                    f"{JOIN} {REPLICAS}) / sum by (deployment, replica) "
                    f"({_NPU_POD.format(metric='npu_chip_info_hbm_total_memory')} {JOIN} {REPLICAS})",
                    "{{deployment}}#{{replica}}",
                ),
            ),
            unit="percentunit",
            source="devices",
        ),
    ),
)

OPERATOR = Dashboard(
    uid="dspool-operator",
    title="dspool / Operator",
    description="The operator itself: pass duration, decision latency, API errors, leadership.",
    panels=(
        Panel(
            "Reconcile pass duration p50 / p99",
            "One pass decides for every DeepSeekDeployment.",
            (
                Query(
                    "histogram_quantile(0.5, sum by (le) (rate(dspool_reconcile_pass_duration_seconds_bucket"
                    "[$__rate_interval])))",
                    "p50",
                ),
                Query(
                    "histogram_quantile(0.99, sum by (le) (rate(dspool_reconcile_pass_duration_seconds_bucket"
                    "[$__rate_interval])))",
                    "p99",
                ),
            ),
            unit="s",
            thresholds=(10, 30),  # DspoolReconcileSlow: p99 above 30 s
        ),
        Panel(
            "Placement decision latency p50 / p99",
            "Time to decide where one replica goes.",
            (
                Query(
                    "histogram_quantile(0.5, sum by (le) (rate(dspool_placement_decision_seconds_bucket"
                    "[$__rate_interval])))",
                    "p50",
                ),
                Query(
                    "histogram_quantile(0.99, sum by (le) (rate(dspool_placement_decision_seconds_bucket"
                    "[$__rate_interval])))",
                    "p99",
                ),
            ),
            unit="s",
        ),
        Panel(
            "API write errors",
            "Failed writes per second by verb, kind and HTTP code (409 = conflict); 0 when none failed.",
            (
                Query(
                    "sum by (verb, kind, code) (rate(dspool_api_write_errors_total[$__rate_interval])) or vector(0)",
                    "{{verb}} {{kind}} {{code}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Leadership",
            "Operators scraped, and how many hold the Lease (exactly 1 is healthy).",
            (Query("sum(dspool_leader)", "leading"), Query("count(dspool_leader)", "operators")),
            kind="stat",
        ),
        Panel(
            "Passes per second",
            "Reconcile passes per second (a pass runs on every change and every resync period).",
            (Query("sum(rate(dspool_reconcile_passes_total[$__rate_interval]))", "passes/s"),),
        ),
        Panel(
            "Rebalancing moves",
            "Moves per hour by event: planned (dry runs too), started, finished, rolled back; and devices freed.",
            (
                Query("sum by (event) (increase(dspool_rebalance_moves_total[1h]))", "{{event}}"),
                Query("sum(increase(dspool_rebalance_devices_freed_total[1h]))", "devices freed"),
            ),
        ),
        Panel(
            "Events posted",
            "Events on DeepSeekDeployments in the last hour, by reason; 0 when none.",
            (Query("sum by (reason) (increase(dspool_events_posted_total[1h])) or vector(0)", "{{reason}}"),),
        ),
    ),
)

DASHBOARDS = (POOL, DEPLOYMENTS, DEVICES, OPERATOR)

_VARIABLE_QUERIES = {
    "accelerator": "label_values(dspool_pool_devices, accelerator)",
    "namespace": "label_values(dspool_deployment_replicas, namespace)",
    "deployment": 'label_values(dspool_deployment_replicas{namespace=~"$namespace"}, deployment)',
}


def _variable(name: str) -> dict[str, Any]:
    query = _VARIABLE_QUERIES[name]
    return {
        "name": name,
        "label": name.capitalize(),
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _layout(panels: Iterable[Panel]) -> list[tuple[Panel, dict[str, int]]]:
    """Left to right, top to bottom; a panel that does not fit on the row starts the next one."""
    placed: list[tuple[Panel, dict[str, int]]] = []
    x = y = row_height = 0
    for panel in panels:
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        placed.append((panel, {"x": x, "y": y, "w": panel.width, "h": panel.height}))
        x += panel.width
        row_height = max(row_height, panel.height)
    return placed


def _panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    instant = panel.kind in ("table", "bargauge", "stat")
    targets = [
        {
            "refId": chr(ord("A") + index),
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "instant": instant,
            "range": not instant,
            **({"format": "table"} if panel.kind == "table" else {}),
        }
        for index, query in enumerate(panel.queries)
    ]
    result: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.thresholds is not None:
        warning, critical = panel.thresholds
        result["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [
                {"color": "green", "value": None},
                {"color": "orange", "value": warning},
                {"color": "red", "value": critical},
            ],
        }
    if panel.kind == "timeseries":
        result["fieldConfig"]["defaults"]["custom"] = {
            "stacking": {"mode": "normal" if panel.stacked else "none"},
            "fillOpacity": 20 if panel.stacked else 0,
            **({"thresholdsStyle": {"mode": "dashed"}} if panel.thresholds else {}),
        }
        result["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    elif panel.kind == "table":
        result["transformations"] = [{"id": "merge", "options": {}}]
    elif panel.kind == "bargauge":
        result["options"] = {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True}
    return result


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model of one dashboard."""
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["dspool"], "asDropdown": True, "title": "dspool"}],
        "templating": {"list": [datasource, *(_variable(name) for name in dashboard.variables)]},
        "panels": [_panel_json(panel, i + 1, grid) for i, (panel, grid) in enumerate(_layout(dashboard.panels))],
    }


def render_json(dashboard: Dashboard) -> str:
    """The dashboard file's text (stable: sorted keys, two-space indent)."""
    return json.dumps(render(dashboard), indent=2, sort_keys=True) + "\n"


_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PROMQL_WORDS = frozenset(
    {
        "sum", "max", "min", "avg", "count", "by", "on", "group_left", "group_right", "without", "or", "and",
        "unless", "rate", "increase", "histogram_quantile", "label_replace", "vector", "absent", "bool",
        "ignoring", "le", "offset", "time", "clamp_min", "max_over_time", "min_over_time", "avg_over_time",
    }
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names, functions and strings left out)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1()",
                               without_matchers)  # fmt: skip
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    names = set(_IDENTIFIER.findall(without_ranges)) - _PROMQL_WORDS
    return {name for name in names if not re.fullmatch(r"\$?__\w+|\d\w*|e\d+", name)}


def queries(dashboard: Dashboard) -> list[tuple[Panel, Query]]:
    """Every (panel, query) pair of a dashboard."""
    return [(panel, query) for panel in dashboard.panels for query in panel.queries]


def check(dashboards: Iterable[Dashboard] = DASHBOARDS) -> list[str]:
    """Problems with the dashboards: unknown metrics, undefined variables, overlapping panels (empty = fine)."""
    problems = []
    for dashboard in dashboards:
        defined = {"datasource", *dashboard.variables, "__rate_interval", "__interval"}
        for panel, query in queries(dashboard):
            for name in sorted(metric_names(query.expr) - KNOWN_METRICS):
                problems.append(f"{dashboard.uid} / {panel.title}: no exporter defines metric {name!r}")
            for variable in sorted(set(re.findall(r"\$([A-Za-z_]\w*)", query.expr)) - defined):
                problems.append(f"{dashboard.uid} / {panel.title}: undefined variable ${variable}")
        cells: set[tuple[int, int]] = set()
        for panel, grid in _layout(dashboard.panels):
            if grid["x"] + grid["w"] > GRID_WIDTH:
                problems.append(f"{dashboard.uid} / {panel.title}: wider than the grid")
            area = {
                (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
            }
            if area & cells:
                problems.append(f"{dashboard.uid} / {panel.title}: overlaps another panel")
            cells |= area
    return problems
