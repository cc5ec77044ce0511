"""kubectl's conventions on every dspool subcommand: -n/-A, --context, --kubeconfig, -o table|wide|json|yaml,
one-line errors and no traceback, tested against an API server that is not running (a closed local port)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from dspool.cli import build_parser
from dspool.kubectl_conventions import OUTPUTS, describe_error

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every subcommand that reads a cluster, with the arguments it needs.
CLUSTER_COMMANDS = {
    "pool": [],
    "rebalance": ["--dry-run"],
    "plan": ["-f", str(REPO_ROOT / "examples" / "r1-671b.yaml"), "--cluster"],
    "doctor": [],
    "cache": [],
}
OFFLINE_COMMANDS = {
    "models": [],
    "accelerators": [],
    "plan": ["deepseek-r1", "-a", "H100-80G"],
    "simulate": ["--pool", str(REPO_ROOT / "examples" / "pools" / "small.yaml"), "--trace", "TRACE"],
}


@pytest.fixture(scope="module")
def stopped_api_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A kubeconfig (two contexts) whose API server is a local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    path = tmp_path_factory.mktemp("kube") / "config"
    cluster = {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "down", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "down", "user": "u"}},
                     {"name": "staging", "context": {"cluster": "down", "user": "u"}}],
    }))  # fmt: skip
    return path, port


def dspool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dspool", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO_ROOT, timeout=120)  # fmt: skip


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def subcommand_options() -> dict[str, set[str]]:
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in subcommands().items()}


def test_every_subcommand_has_the_flags() -> None:
    options = subcommand_options()
    reads_a_cluster = {name for name, flags in options.items() if "--kubeconfig" in flags}
    assert reads_a_cluster == set(CLUSTER_COMMANDS)
    for name in reads_a_cluster:
        assert {"--kubeconfig", "--context", "-o", "--output"} <= options[name], name
    for name in ("pool", "rebalance", "doctor"):
        assert {"-n", "--namespace"} <= options[name], name
    for name in ("pool", "rebalance"):
        assert {"-A", "--all-namespaces"} <= options[name], name
    assert "-n" in options["run"]  # its managed namespaces (repeatable)
    parsers = subcommands()
    for name in ("plan", "models", "accelerators", "simulate", "pool", "rebalance"):
        [output] = [a for a in parsers[name]._actions if "--output" in a.option_strings]
        assert list(output.choices or []) == list(OUTPUTS), name


@pytest.mark.parametrize("command", list(CLUSTER_COMMANDS))
def test_a_stopped_api_server_is_one_line_and_exit_1(command: str, stopped_api_server: tuple[Path, int]) -> None:
    kubeconfig, port = stopped_api_server
    namespaced = ["-n", "team-a"] if command in ("pool", "rebalance", "doctor") else []
    for extra in (["--kubeconfig", str(kubeconfig), *namespaced, "-o", "yaml"],
                  ["--context", "staging", "-o", "json"]):  # fmt: skip
        done = dspool(command, *CLUSTER_COMMANDS[command], *extra, env={"KUBECONFIG": str(kubeconfig)})
        assert done.returncode == 1, (extra, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"dspool: error: cannot reach the API server at https://127.0.0.1:{port}: "
                               "connection refused"), line  # fmt: skip


def test_an_unknown_context_and_no_kubeconfig_are_one_line(stopped_api_server: tuple[Path, int]) -> None:
    kubeconfig, _ = stopped_api_server
    done = dspool("pool", "--kubeconfig", str(kubeconfig), "--context", "nope")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("dspool: error: no usable kubeconfig:") and "nope" in line
    empty = {"KUBECONFIG": str(kubeconfig.parent / "missing"), "KUBERNETES_SERVICE_HOST": ""}
    done = dspool("doctor", env=empty)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("dspool: error: no usable kubeconfig: no kubeconfig ($KUBECONFIG, ~/.kube/config) "
                                   "and not running in a pod (set KUBECONFIG or pass --kubeconfig; --context picks a "
                                   "context)")  # fmt: skip


def test_run_against_a_stopped_api_server_logs_one_line_per_retry(stopped_api_server: tuple[Path, int]) -> None:
    kubeconfig, port = stopped_api_server
    process = subprocess.Popen([sys.executable, "-m", "dspool", "run", "--liveness-port", "0", "--metrics-port", "0"],
                               env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)  # fmt: skip
    expected = f"cannot reach the API server at https://127.0.0.1:{port}: connection refused"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120  # start-up takes 3-5 s idle, far longer on a loaded CI machine
    while time.monotonic() < deadline and not any(expected in line for line in list(lines)):
        time.sleep(0.2)
    time.sleep(1)  # the operator keeps retrying, as a pod must: nothing else is printed meanwhile
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    reader.join(timeout=10)
    output = "".join(lines)
    assert "Traceback" not in output, output[-2000:]
    assert expected in output, output[-2000:]


@pytest.mark.parametrize("output", OUTPUTS)
def test_offline_subcommands_speak_every_output_format(output: str, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        json.dumps({"at": 0, "lifetime": 60, "name": "a", "spec": {"model": "deepseek-r1-distill-qwen-7b"}}) + "\n"
    )
    for command, args in OFFLINE_COMMANDS.items():
        done = dspool(command, *[str(trace) if a == "TRACE" else a for a in args], "-o", output)
        assert done.returncode == 0, (command, done.stderr)
        if output == "json":
            json.loads(done.stdout)
        if output == "yaml":
            as_json = json.loads(
                dspool(command, *[str(trace) if a == "TRACE" else a for a in args], "-o", "json").stdout
            )
            as_yaml = yaml.safe_load(done.stdout)
            for document in (as_json, as_yaml):
                if isinstance(document, dict):
                    document.pop("decisionSeconds", None)  # simulate's timings differ run to run
            assert as_yaml == as_json, command


def test_an_api_refusal_reads_as_status_reason_and_message() -> None:
    body = json.dumps({"kind": "Status", "reason": "Forbidden", "code": 403,
                       "message": 'nodes is forbidden: User "jane" cannot list resource "nodes"'})  # fmt: skip
    error = ApiException(status=403, reason="Forbidden")
    error.body = body
    assert describe_error(error) == (
        'the API server refused: 403 Forbidden: nodes is forbidden: User "jane" cannot list resource "nodes"'
    )
