"""End-to-end scale run on the local control plane: N fake nodes, M DeepSeekDeployments, one operator.

    python bench/operator_scale.py --nodes 1000 --deployments 60

Applies a generated pool (e2e/genpool.py), starts `dspool run` limited to it, creates a realistic mix of
DSDs at once and measures the time until every DSD has settled (Ready, Degraded or Unschedulable), the
placed replicas, and the operator's own last pass duration (from its /metrics). Cleans up afterwards.
Needs `make cluster-up`. Prints one table; figures go in docs/operator.md.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kubernetes import client, config

from dspool import api
from dspool.sim.apply import apply_pool, delete_pool
from dspool.sim.fleet import load_pool

REPO = Path(__file__).resolve().parent.parent
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
MIX = [
    ("deepseek-r1", 0.05),
    ("deepseek-r1-distill-llama-70b", 0.10),
    ("deepseek-r1-distill-qwen-32b", 0.15),
    ("deepseek-r1-distill-qwen-14b", 0.20),
    ("deepseek-r1-distill-llama-8b", 0.15),
    ("deepseek-r1-distill-qwen-7b", 0.10),
    ("deepseek-r1-distill-qwen-1.5b", 0.25),
]
SETTLED = {"Ready", "Degraded", "Unschedulable", "Failed"}


def main() -> int:
    """Run the scale scenario and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    name = f"scale-{args.nodes}"
    namespace = f"bench-{args.nodes}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(subprocess.run([sys.executable, str(REPO / "e2e" / "genpool.py"), "--nodes", str(args.nodes),
                                     "--seed", str(args.seed), "--name", name], capture_output=True, text=True,
                                    check=True).stdout)  # fmt: skip
    pool = load_pool(handle.name)
    started = time.monotonic()
    apply_pool(core, pool)
    pool_seconds = time.monotonic() - started
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    operator = subprocess.Popen(
        [sys.executable, "-m", "dspool", "run", "--node-selector", f"dspool.io/pool={name}", "--namespace", namespace,
         "--liveness-port", "0", "--metrics-port", "18082", "--lease-name", f"bench-{name}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(5)  # kopf lists every node and pod first
        rng = random.Random(args.seed)
        models = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX], k=args.deployments)
        created = time.monotonic()
        for index, model in enumerate(models):
            body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"d{index:03d}"},
                    "spec": {"model": model, "replicas": rng.choice([1, 1, 2, 3])}}  # fmt: skip
            custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)
        create_seconds = time.monotonic() - created
        while time.monotonic() - created < args.timeout:
            items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
            phases = [(i.get("status") or {}).get("phase") for i in items]
            if len(phases) == args.deployments and all(p in SETTLED for p in phases):
                break
            time.sleep(1)
        settle_seconds = time.monotonic() - created
        replicas = sum(len((i.get("status") or {}).get("placements") or []) for i in items)
        ready = sum((i.get("status") or {}).get("readyReplicas", 0) for i in items)
        with urllib.request.urlopen("http://127.0.0.1:18082/metrics", timeout=5) as response:
            metrics = response.read().decode()
        last_pass = next(line.split()[-1] for line in metrics.splitlines()
                         if line.startswith("dspool_reconcile_pass_seconds"))  # fmt: skip
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        core.delete_namespace(namespace)
        delete_pool(core, pool)
    header = ["nodes", "DSDs", "pool apply s", "create s", "all settled s", "replicas placed", "ready", "last pass s"]
    values = [args.nodes, args.deployments, f"{pool_seconds:.1f}", f"{create_seconds:.1f}", f"{settle_seconds:.1f}",
              replicas, ready, f"{float(last_pass):.3f}"]  # fmt: skip
    print("  ".join(f"{h:>{len(h)}}" for h in header))
    print("  ".join(f"{v!s:>{len(h)}}" for h, v in zip(header, values, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
