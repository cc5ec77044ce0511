"""The dspool command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dspool.cli import main

PLAN_KEYS = {
    "model",
    "accelerator",
    "precision",
    "feasible",
    "devicesPerReplica",
    "nodesPerReplica",
    "devicesPerNode",
    "tensorParallel",
    "pipelineParallel",
    "backend",
    "maxModelLen",
    "memoryGiB",
    "reason",
}


def test_plan_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "deepseek-r1", "--accelerator", "H100-80G", "-o", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= PLAN_KEYS
    assert {"weightsPerDevice", "kvCachePerDevice", "overheadPerDevice", "usablePerDevice"} <= set(result["memoryGiB"])
    assert (result["devicesPerReplica"], result["nodesPerReplica"], result["precision"]) == (16, 2, "fp8")


def test_infeasible_plan_exits_zero_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "deepseek-r1", "-a", "a100-80g", "--precision", "fp8", "-o", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["feasible"] is False and "FP8" in result["reason"]


def test_plan_without_accelerator_prints_one_row_per_accelerator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "deepseek-r1-distill-qwen-32b"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("MODEL") and len(lines) == 1 + 20


def test_plan_all_covers_every_model_and_accelerator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--all", "-o", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12 * 20  # 12 models: issue 22 added V3.1, V3.2 and kin


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "deepseek-r2"], "valid models: deepseek-r1"),
        (["plan", "deepseek-r1", "-a", "tpu-v5"], "valid accelerators: A100-40G"),
        (["plan", "deepseek-r1", "--precision", "int4"], "choose from"),
        (["plan", "deepseek-r1", "--kv-cache-tokens", "-5"], "at least 1"),
        (["plan", "deepseek-r1", "--gpu-memory-utilization", "abc"], "not a number"),
        (["plan", "deepseek-r1", "--all"], "--all"),
        (["plan"], "give a MODEL or --all"),
        (["plan", "deepseek-r1", "-a", "A100-80G", "--kv-cache-tokens", "20000000"], "--kv-cache-tokens"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dspool", *argv], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_models_and_accelerators_list_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "deepseek-r1-distill-qwen-1.5b" in capsys.readouterr().out
    assert main(["accelerators"]) == 0
    out = capsys.readouterr().out
    assert "huawei.com/Ascend310P" in out and "H200-141G" in out


def test_the_cli_module_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dspool.cli", "plan", "deepseek-r1", "-a", "A100-80G", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["precision"] == "w8a16"


def test_the_cli_commands_that_read_the_cluster_do_not_load_the_kopf_layer() -> None:
    code = (
        "import sys, dspool.cli, dspool.kube.clusterview; "
        "print('kopf' in sys.modules, 'dspool.handlers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
