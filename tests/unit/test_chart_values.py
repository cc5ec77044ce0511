"""The chart's values stay in step with the code they configure (no second set of defaults drifting)."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import yaml

from dspool.cli import build_parser
from dspool.settings import chart_values
from dspool.workloads import ImageDefaults

REPO_ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((REPO_ROOT / "charts" / "dspool" / "values.yaml").read_text())
FLAG_OF_VALUE = chart_values()  # chart value -> the `dspool run` setting it becomes (templates/deployment.yaml)


def run_defaults() -> dict[str, object]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = subparsers.choices["run"]
    return {action.dest: action.default for action in run._actions}


def test_every_operator_value_is_a_dspool_run_flag_with_the_same_default() -> None:
    defaults = run_defaults()
    assert set(VALUES["operator"]) == set(FLAG_OF_VALUE)
    for value, dest in FLAG_OF_VALUE.items():
        assert VALUES["operator"][value] == defaults[dest], f"operator.{value} != dspool run --{dest}"


def test_every_dspool_run_flag_is_reachable_from_the_chart() -> None:
    # --namespace is watchNamespaces, --lease-namespace the release namespace ($POD_NAMESPACE),
    # --verbose the same as --log-level debug, --help is not a setting.
    covered = set(FLAG_OF_VALUE.values()) | {"namespaces", "lease_namespace", "verbose", "help"}
    assert set(run_defaults()) <= covered


def test_engine_image_values_name_the_operators_image_settings() -> None:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.capitalize() for part in rest)

    assert set(VALUES["engineImages"]) == {camel(f.name) for f in fields(ImageDefaults)}


def test_helm_is_stamped_with_the_kubernetes_minor_of_its_own_client_go() -> None:
    go_mod = (REPO_ROOT / "e2e" / "tools" / "helm" / "go.mod").read_text()
    minor = re.search(r"k8s\.io/client-go v0\.(\d+)\.", go_mod)
    tools = (REPO_ROOT / "e2e" / "tools.py").read_text()
    assert minor is not None
    assert f"chartutil.k8sVersionMinor={minor.group(1)}" in tools
    assert f"rules.k8sVersionMinor={minor.group(1)}" in tools
