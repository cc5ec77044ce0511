"""One settings object: `dspool run`'s flags, their DSPOOL_* variables and the chart's values derive from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from dspool.cli import main
from dspool.settings import OperatorSettings, add_run_arguments, chart_values, env_name, flag_fields, from_args


def parse(argv: list[str], env: dict[str, str] | None = None) -> OperatorSettings:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, env or {})
    return from_args(parser.parse_args(argv), env or {})


def test_without_flags_or_variables_the_settings_are_the_dataclass_defaults() -> None:
    assert parse([]) == OperatorSettings()


def test_a_variable_sets_a_default_and_a_flag_wins_over_it() -> None:
    env = {"DSPOOL_LEASE_SECONDS": "30", "DSPOOL_NODE_METRICS": "false", "DSPOOL_NAMESPACES": "a, b",
           "DSPOOL_NODE_SELECTOR": "dspool.io/pool=x", "DSPOOL_REBALANCE": "on"}  # fmt: skip
    settings = parse([], env)
    assert (settings.lease_seconds, settings.node_metrics, settings.namespaces) == (30, False, ["a", "b"])
    assert settings.node_selector == {"dspool.io/pool": "x"} and settings.rebalance == "on"
    assert parse(["--lease-seconds", "20", "--node-metrics"], env).lease_seconds == 20
    assert parse(["--node-metrics"], env).node_metrics is True


def test_the_lease_lives_in_the_pods_namespace_unless_told_otherwise() -> None:
    assert parse([], {"POD_NAMESPACE": "dspool-system"}).lease_namespace == "dspool-system"
    assert parse(["--lease-namespace", "x"], {"POD_NAMESPACE": "dspool-system"}).lease_namespace == "x"


def test_the_test_hook_slows_a_pass_only_when_set() -> None:
    assert parse([], {"DSPOOL_TEST_PASS_DELAY_SECONDS": "2.5"}).pass_delay_seconds == 2.5


def test_every_flag_has_a_variable_and_help_and_every_chart_value_names_a_setting() -> None:
    names = {f.name for f in dataclasses.fields(OperatorSettings)}
    assert set(chart_values().values()) <= names
    for setting in flag_fields():
        assert setting.metadata["help"] and env_name(setting.name).startswith("DSPOOL_")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [("DSPOOL_LEASE_SECONDS", "soon", "not a whole number"), ("DSPOOL_NODE_METRICS", "maybe", "not a boolean"),
     ("DSPOOL_REBALANCE", "always", "choose one of off, dry-run, on"), ("DSPOOL_METRICS_PORT", "70000", "not a port")],
)  # fmt: skip
def test_a_bad_variable_is_one_line_and_exit_2(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert variable in err and message in err and len(err.strip().splitlines()) == 1
