"""Scrape configurations from ServiceMonitor and PodMonitor objects, the way prometheus-operator writes them.

The observability test must scrape with what the chart ships, not with a hand-written configuration: the
chart's ServiceMonitor once lacked ``honorLabels`` and a hand-written ``honor_labels: true`` hid it. This
module turns a rendered monitor into the Prometheus scrape configuration prometheus-operator v0.85.0 (the
version pinned in e2e/tools.py) generates, following ``pkg/prometheus/promcfg.go`` of that module:

- ``generateServiceMonitorConfig``: ``honor_labels`` from the endpoint's ``honorLabels`` (false when unset),
  ``scrape_interval``/``scrape_timeout``/``metrics_path`` from the endpoint; relabelings: the job into
  ``__tmp_prometheus_job_name``, keep on the Service's ``matchLabels``, keep on the endpoint port name, then the
  target labels ``pod`` (from the endpoint address target), ``namespace``, ``service``, ``pod``, ``container``,
  drop of Failed/Succeeded pods, ``job`` = the Service name, ``endpoint`` = the port name, and last the
  endpoint's own ``relabelings``; ``metric_relabel_configs`` from ``metricRelabelings``;
- ``generatePodMonitorConfig``: the same for pods (keep on pod ``matchLabels``, keep on the container port
  name, ``namespace``, ``container``, ``pod``, the ``podTargetLabels``, ``job`` = ``<namespace>/<name>``,
  ``endpoint``, then the endpoint's ``relabelings``).

Prometheus here is built without Kubernetes service discovery (``remove_all_sd``), so targets come from
``file_sd_configs`` files carrying the ``__meta_kubernetes_*`` labels Kubernetes discovery (role endpoints
and role pod) would give (:func:`service_endpoint_target`, :func:`pod_targets`); everything after discovery
is Prometheus' own relabeling.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def sanitize_label_name(name: str) -> str:
    """prometheus-operator's ``sanitizeLabelName``: every character outside ``[a-zA-Z0-9_]`` becomes ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(config: dict[str, Any]) -> dict[str, Any]:
    """A prometheus-operator RelabelConfig (camelCase) as Prometheus configuration (snake_case)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label", "separator": "separator",
            "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}  # fmt: skip
    converted = {keys[key]: value for key, value in config.items() if key in keys}
    if "action" in converted:
        converted["action"] = str(converted["action"]).lower()
    return converted


def _common(endpoint: dict[str, Any], job_name: str, targets_file: Path) -> dict[str, Any]:
    config: dict[str, Any] = {"job_name": job_name, "honor_labels": bool(endpoint.get("honorLabels", False))}
    config["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    for key, prometheus_key in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"),
                                ("path", "metrics_path"), ("scheme", "scheme")):  # fmt: skip
        if endpoint.get(key):
            config[prometheus_key] = endpoint[key]
    return config


def _selector_keeps(match_labels: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [
        {"action": "keep",
         "source_labels": [f"__meta_kubernetes_{kind}_label_{sanitize_label_name(key)}",
                           f"__meta_kubernetes_{kind}_labelpresent_{sanitize_label_name(key)}"],
         "regex": f"({value});true"}
        for key, value in sorted(match_labels.items())
    ]  # fmt: skip


def _running_filter() -> dict[str, Any]:
    return {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}


def _pod_target_labels(names: list[str]) -> list[dict[str, Any]]:
    return [
        {"source_labels": [f"__meta_kubernetes_pod_label_{sanitize_label_name(name)}"],
         "target_label": sanitize_label_name(name), "regex": "(.+)", "replacement": "${1}"}
        for name in names
    ]  # fmt: skip


def service_monitor_scrape_configs(monitor: dict[str, Any], targets_file: Path) -> list[dict[str, Any]]:
    """One scrape configuration per endpoint of a ServiceMonitor (targets read from ``targets_file``)."""
    spec, meta = monitor["spec"], monitor["metadata"]
    configs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        config = _common(endpoint, f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}", targets_file)
        relabelings: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        relabelings += _selector_keeps(spec["selector"].get("matchLabels", {}), "service")
        if endpoint.get("port"):
            relabelings.append(
                {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": endpoint["port"]}
            )
        address = ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]
        relabelings += [
            {"source_labels": address, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}",
             "target_label": "node"},
            {"source_labels": address, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}",
             "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            _running_filter(),
        ]  # fmt: skip
        relabelings += [
            {"source_labels": [f"__meta_kubernetes_service_label_{sanitize_label_name(name)}"],
             "target_label": sanitize_label_name(name), "regex": "(.+)", "replacement": "${1}"}
            for name in spec.get("targetLabels", [])
        ]  # fmt: skip
        relabelings += _pod_target_labels(spec.get("podTargetLabels", []))
        relabelings.append(
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"}
        )
        configs.append(_with_endpoint_relabelings(config, relabelings, endpoint))
    return configs


def pod_monitor_scrape_configs(monitor: dict[str, Any], targets_file: Path) -> list[dict[str, Any]]:
    """One scrape configuration per ``podMetricsEndpoints`` entry of a PodMonitor."""
    spec, meta = monitor["spec"], monitor["metadata"]
    configs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        config = _common(endpoint, f"podMonitor/{meta['namespace']}/{meta['name']}/{index}", targets_file)
        relabelings: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        relabelings.append(_running_filter())
        relabelings += _selector_keeps(spec["selector"].get("matchLabels", {}), "pod")
        if endpoint.get("port"):
            relabelings.append(
                {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                 "regex": endpoint["port"]}
            )  # fmt: skip
        relabelings += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ]
        relabelings += _pod_target_labels(spec.get("podTargetLabels", []))
        relabelings.append({"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"})
        configs.append(_with_endpoint_relabelings(config, relabelings, endpoint))
    return configs


def _label_meta(kind: str, labels: dict[str, str]) -> dict[str, str]:
    meta = {}
    for key, value in labels.items():
        meta[f"__meta_kubernetes_{kind}_label_{sanitize_label_name(key)}"] = value
        meta[f"__meta_kubernetes_{kind}_labelpresent_{sanitize_label_name(key)}"] = "true"
    return meta


def service_endpoint_target(
    address: str, service: dict[str, Any], port_name: str, pod_name: str, container: str
) -> dict[str, Any]:
    """A file_sd target group for one endpoint of a Service backed by a running pod (discovery role endpoints)."""
    labels = {
        "__meta_kubernetes_namespace": service["metadata"]["namespace"],
        "__meta_kubernetes_service_name": service["metadata"]["name"],
        **_label_meta("service", service["metadata"].get("labels", {})),
        "__meta_kubernetes_endpoint_port_name": port_name,
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": pod_name,
        "__meta_kubernetes_pod_name": pod_name,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_phase": "Running",
    }
    return {"targets": [address], "labels": labels}


def pod_targets(address: str, pod: dict[str, Any]) -> list[dict[str, Any]]:
    """file_sd target groups for every declared container port of a pod (discovery role pod), all at ``address``."""
    meta = pod["metadata"]
    common = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_phase": (pod.get("status") or {}).get("phase") or "Running",
        **_label_meta("pod", meta.get("labels") or {}),
    }
    for key, value in (meta.get("annotations") or {}).items():
        common[f"__meta_kubernetes_pod_annotation_{sanitize_label_name(key)}"] = value
        common[f"__meta_kubernetes_pod_annotationpresent_{sanitize_label_name(key)}"] = "true"
    groups = []
    for container in pod["spec"]["containers"]:
        for port in container.get("ports") or []:
            labels = {**common, "__meta_kubernetes_pod_container_name": container["name"],
                      "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                      "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])}  # fmt: skip
            groups.append({"targets": [address], "labels": labels})
    return groups


def write_targets(path: Path, groups: list[dict[str, Any]]) -> None:
    """Replace a file_sd file atomically (Prometheus watches it and never reads half a file)."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(groups))
    scratch.replace(path)


def _with_endpoint_relabelings(
    config: dict[str, Any], relabelings: list[dict[str, Any]], endpoint: dict[str, Any]
) -> dict[str, Any]:
    """The end both monitor kinds share: the endpoint label, the object's own relabelings, metric relabelings."""
    if endpoint.get("port"):
        relabelings.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    relabelings += [_relabel(r) for r in endpoint.get("relabelings", [])]
    config["relabel_configs"] = relabelings
    if endpoint.get("metricRelabelings"):
        config["metric_relabel_configs"] = [_relabel(r) for r in endpoint["metricRelabelings"]]
    return config
