"""`kubectl dspool ...`: the package installs kubectl-dspool, which kubectl runs as a plugin from PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client
from test_operator import kubectl_path

from dspool.sim.fleet import PoolHandle


def kubectl_dspool(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `kubectl dspool ARGS` with the venv's scripts on PATH, as an installed package puts them."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{scripts}:{os.environ.get('PATH', '')}", "KUBECONFIG": kubeconfig}
    return subprocess.run([kubectl_path(), "dspool", *args], capture_output=True, text=True, env=env)


def test_kubectl_dspool_plans_and_reads_the_live_pool(kubeconfig: str, fake_pool: Callable[[str], PoolHandle]) -> None:
    planned = kubectl_dspool(kubeconfig, "plan", "deepseek-r1", "-a", "A100-80G", "-o", "json")
    assert planned.returncode == 0, planned.stderr
    assert (json.loads(planned.stdout)["precision"], json.loads(planned.stdout)["devicesPerReplica"]) == ("w8a16", 16)
    pool = fake_pool("small.yaml")
    listed = kubectl_dspool(kubeconfig, "pool", "--node-selector", f"dspool.io/pool={pool.name}", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(n["name"] for n in json.loads(listed.stdout)["nodes"]) == sorted(pool.node_names)


def test_kubectl_dspool_follows_kubectls_conventions_and_a_refusal_is_one_line(
    kubeconfig: str, fake_pool: Callable[[str], PoolHandle], core_v1: client.CoreV1Api, namespace: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    pool = fake_pool("small.yaml")
    selector = ["--node-selector", f"dspool.io/pool={pool.name}"]
    as_yaml = kubectl_dspool(kubeconfig, "pool", *selector, "-A", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert sorted(n["name"] for n in yaml.safe_load(as_yaml.stdout)["nodes"]) == sorted(pool.node_names)
    wide = kubectl_dspool(kubeconfig, "pool", *selector, "-n", namespace, "-o", "wide", "--context", "dspool-local")
    assert wide.returncode == 0, wide.stderr
    assert all(name in wide.stdout for name in pool.node_names)  # wide lists every node
    doctor = kubectl_dspool(kubeconfig, "doctor", *selector, "-o", "json")
    assert {f["check"] for f in json.loads(doctor.stdout)} >= {"crd", "operator", "rbac", "lws"}, doctor.stderr

    # A user without rights: one line with the API server's status and reason, exit 1, no traceback.
    core_v1.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(
        name="nobody")))  # fmt: skip
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core_v1.create_namespaced_service_account_token("nobody", namespace, request).status.token
    config = yaml.safe_load(Path(kubeconfig).read_text())
    config["users"] = [{"name": "nobody", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "nobody"
    restricted = tmp_path / "nobody.kubeconfig"
    restricted.write_text(yaml.safe_dump(config))
    refused = kubectl_dspool(str(restricted), "pool", *selector)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("dspool: error: the API server refused: 403 Forbidden: nodes is forbidden: "
                           f'User "system:serviceaccount:{namespace}:nobody"'), line  # fmt: skip
