"""The dashboards read only metrics that exist, use defined variables and lay out cleanly."""

from __future__ import annotations

import json
from pathlib import Path

from dspool.dashboards import DASHBOARDS, POOL, Dashboard, Panel, Query, check, metric_names, render

CHART = Path(__file__).resolve().parents[2] / "charts" / "dspool"


def test_the_shipped_dashboards_pass_their_checks_and_cover_the_four_views() -> None:
    assert check() == []
    assert {d.uid for d in DASHBOARDS} == {"dspool-pool", "dspool-deployments", "dspool-devices", "dspool-operator"}
    assert {p.name for p in (CHART / "dashboards").glob("*.json")} == {f"{d.uid}.json" for d in DASHBOARDS}


def test_a_panel_reading_a_metric_nobody_emits_is_caught() -> None:
    stale = Panel("KV cache", "old name", (Query('vllm:gpu_cache_usage_perc{namespace=~"$namespace"}'),))
    problems = check([Dashboard("x", "x", "x", (stale,), variables=())])
    assert "no exporter defines metric 'vllm:gpu_cache_usage_perc'" in problems[0]
    assert "undefined variable $namespace" in problems[1]


def test_metric_names_skip_labels_functions_and_strings() -> None:
    expr = 'sum by (le, deployment) (rate(vllm:x_bucket{a="b:c"}[5m]) * on(namespace, pod) group_left(deployment) y)'
    assert metric_names(expr) == {"vllm:x_bucket", "y"}


def test_rendered_json_has_unique_panel_ids_and_a_datasource_variable() -> None:
    for dashboard in DASHBOARDS:
        model = render(dashboard)
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids))
        assert model["templating"]["list"][0]["type"] == "datasource"
        assert all(t["datasource"]["uid"] == "${datasource}" for p in model["panels"] for t in p["targets"])
    pool = json.loads((CHART / "dashboards" / "dspool-pool.json").read_text())
    assert pool["title"] == POOL.title and pool["panels"][0]["title"] == "Placeable replicas now"


def test_the_observability_doc_names_every_metric_panel_and_alert() -> None:
    import yaml

    from dspool.metrics import METRIC_NAMES

    doc = (CHART.parents[1] / "docs" / "observability.md").read_text()
    rules = yaml.safe_load((CHART / "rules" / "dspool.rules.yaml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    missing = [name for name in METRIC_NAMES if f"`{name}`" not in doc]
    missing += [
        panel.title for dashboard in DASHBOARDS for panel in dashboard.panels if f"| {panel.title} |" not in doc
    ]
    missing += [alert for alert in alerts if f"### {alert}" not in doc]
    assert not missing, f"docs/observability.md does not describe: {missing}"


def test_panel_thresholds_turn_red_where_the_matching_alert_fires() -> None:
    import yaml

    rules = yaml.safe_load((CHART / "rules" / "dspool.rules.yaml").read_text())
    alert_expr = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    panels = {panel.title: panel for dashboard in DASHBOARDS for panel in dashboard.panels}
    watched = {
        "KV-cache usage": "DspoolKVCacheSaturated",
        "Longest wait": "DspoolReplicasUnschedulable",
        "Reconcile pass duration p50 / p99": "DspoolReconcileSlow",
    }
    for title, alert in watched.items():
        thresholds = panels[title].thresholds
        assert thresholds is not None, title
        warning, critical = thresholds
        assert warning < critical
        assert alert_expr[alert].rstrip().endswith(f"> {critical:g}"), (title, alert_expr[alert])
    model = next(render(d) for d in DASHBOARDS if d.uid == "dspool-deployments")
    [kv] = [p for p in model["panels"] if p["title"] == "KV-cache usage"]
    assert kv["fieldConfig"]["defaults"]["thresholds"]["steps"][-1] == {"color": "red", "value": 0.9}
    assert kv["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}
