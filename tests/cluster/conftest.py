"""Fixtures for tests against a real Kubernetes API server.

Every test under tests/cluster is marked ``cluster`` (``make cluster-test`` runs them; ``make unit``
skips them). By default the session uses the local control plane: ``e2e/cluster.py up`` starts it,
building the binaries on first use, or reuses a healthy running one.

The tests run in parallel (``pytest -n 4``, pytest-xdist): every worker shares the one control plane, and
each test keeps to its own namespace and its own pool label, so tests never see each other's devices.
Tests that change what every test shares (restart the API server, replace or delete a CRD, take LWS
away) are marked ``serial``: ``make cluster-test`` runs them one at a time on a second control plane of
their own (``DSPOOL_CLUSTER_DIR``), beside the parallel ones. Tests that time themselves finely are marked
``quiet`` and run last, alone. Namespaces are deleted without waiting and pools at the end of the session
(see ``Leftovers``); the session waits for every namespace once, at its end, and fails naming any that is
stuck.

Environment:

- ``DSPOOL_KUBECONFIG=<path>``: use that existing cluster instead (e.g. kind, see e2e/kind/run-e2e.sh);
  nothing is started or stopped.
- ``DSPOOL_CLUSTER_DIR=<dir>``: the local control plane whose state is in ``<dir>`` instead of ``.cluster/``
  (``e2e/cluster.py`` reads it too); started there if it is not running.
- ``DSPOOL_CLUSTER_TEARDOWN=1``: stop the local control plane at the end, but only when this session
  started it and is not an xdist worker (workers share the cluster: ``.ci/run`` stops it itself).
  Otherwise the cluster stays up for the next run, which then starts in about a second. A cluster that
  was already running is never stopped.
- ``DSPOOL_EXISTING_POOL=<label value>``: the ``fake_pool`` fixture does not create kwok nodes but
  uses the nodes labelled ``dspool.io/pool=<value>`` (real nodes dressed as accelerators, for kind).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from dspool.sim.apply import apply_pool, delete_pool, install_crd
from dspool.sim.fleet import POOL_LABEL, PoolFile, PoolHandle, load_pool, node_manifests

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "e2e" / "cluster.py"
# The local control plane's state (e2e/cluster.py): `.cluster/`, or a second cluster's directory.
CLUSTER_DIR = Path(os.environ.get("DSPOOL_CLUSTER_DIR") or REPO_ROOT / ".cluster").resolve()
LOCAL_KUBECONFIG = CLUSTER_DIR / "kubeconfig"
POOLS_DIR = REPO_ROOT / "examples" / "pools"
CLUSTER_TESTS_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in tests/cluster with `cluster`, before -m selection runs."""
    for item in items:
        if CLUSTER_TESTS_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.cluster)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll predicate() until it returns something truthy and return that, or fail saying what."""
    deadline = time.monotonic() + timeout
    last_error: ApiException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except ApiException as error:  # e.g. a 404 while an object is still being created
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last API error: {last_error.status} {last_error.reason})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def _local_cluster_is_up() -> bool:
    status = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True)
    return status.returncode == 0


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: the xdist workers of a run share one cluster and one cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cluster_lock(kubeconfig: str, name: str) -> contextlib.AbstractContextManager[None]:
    """A lock named for the cluster under test (its kubeconfig), e.g. around a read-then-replace of a CRD."""
    cluster = hashlib.sha256(str(Path(kubeconfig).resolve()).encode()).hexdigest()[:12]
    return file_lock(Path(tempfile.gettempdir()) / "dspool-test-locks" / f"{cluster}-{name}.lock")


def _is_xdist_worker() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    """Path of an admin kubeconfig for the cluster under test (starting the local one if needed)."""
    existing = os.environ.get("DSPOOL_KUBECONFIG")
    if existing:
        yield existing
        return
    was_running = _local_cluster_is_up()
    if not was_running:  # `up` takes the checkout's cluster lock: a second worker finds it up and returns
        result = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"`e2e/cluster.py up` failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    yield str(LOCAL_KUBECONFIG)
    if not was_running and not _is_xdist_worker() and os.environ.get("DSPOOL_CLUSTER_TEARDOWN") == "1":
        subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "down"], check=True)


@pytest.fixture(scope="session")
def api_client(kubeconfig: str) -> client.ApiClient:
    """An API client authenticated as cluster admin."""
    return config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture(scope="session")
def core_v1(api_client: client.ApiClient) -> client.CoreV1Api:
    """The core/v1 API."""
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps_v1(api_client: client.ApiClient) -> client.AppsV1Api:
    """The apps/v1 API."""
    return client.AppsV1Api(api_client)


def unique_name(prefix: str) -> str:
    """A DNS-1123 name that no other test run uses."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40].rstrip("-")
    return f"{cleaned}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """The `wait_for(predicate, timeout, what)` helper."""
    return wait_for


class Leftovers:
    """What the tests of this session left to clean up: namespaces being deleted and pools to delete.

    The namespace controller waits 5 s before it starts on a deleted namespace, and pods whose node is
    gone go only after the pod garbage collector's 40 s quarantine: waiting after each test cost 5-77 s a
    test. So a test's namespace is deleted without waiting (the deletion overlaps the next tests), and its
    pool's nodes stay until the end of the session (kwok removes the namespace's pods from live nodes at
    once; deleting the nodes first would leave them to the quarantine). At the end every namespace must be
    gone, then the pools are deleted.
    """

    def __init__(self, core_v1: client.CoreV1Api) -> None:
        self.core_v1 = core_v1
        self.namespaces: list[str] = []
        self.pools: list[PoolFile] = []

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting; it is checked at the end (or by ``wait_namespaces_gone``)."""
        try:
            self.core_v1.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:  # 404: already gone (the test deleted it itself)
                raise
        self.namespaces.append(name)

    def delete_pool_later(self, pool: PoolFile) -> None:
        """Delete a pool's nodes at the end of the session (no other test selects its unique label)."""
        self.pools.append(pool)

    def _present(self) -> list[str]:
        present = []
        for name in self.namespaces:
            try:
                self.core_v1.read_namespace(name)
            except ApiException as error:
                if error.status != 404:
                    raise
                continue
            present.append(name)
        self.namespaces = present
        return present

    def wait_namespaces_gone(self, timeout: float) -> None:
        """Wait until every namespace deleted so far is gone; fail naming those that are not."""
        deadline = time.monotonic() + timeout
        while self._present():
            if time.monotonic() >= deadline:
                pytest.fail(f"namespaces still not deleted {timeout:.0f}s later: {', '.join(self.namespaces)}")
            time.sleep(0.5)

    def delete_pools(self) -> None:
        """Delete the nodes of every pool handed over."""
        for pool in self.pools:
            delete_pool(self.core_v1, pool)
        self.pools = []


@pytest.fixture(scope="session")
def leftovers(core_v1: client.CoreV1Api) -> Iterator[Leftovers]:
    """The session's leftovers; at its end every deleted namespace must be gone, then the pools are deleted."""
    left = Leftovers(core_v1)
    yield left
    try:
        left.wait_namespaces_gone(240)
    finally:
        left.delete_pools()


@pytest.fixture
def no_namespace_being_deleted(leftovers: Leftovers) -> None:
    """For a test that looks at the whole cluster (e.g. whether any DSD exists): earlier tests' namespaces gone."""
    leftovers.wait_namespaces_gone(240)


@pytest.fixture
def namespace(core_v1: client.CoreV1Api, leftovers: Leftovers, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (its default service account ready), deleted after the test (gone by the session's end)."""
    name = unique_name(f"t-{request.node.name}")
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: core_v1.read_namespaced_service_account("default", name),
        60,
        f"the default service account in namespace {name}",
    )
    yield name
    leftovers.delete_namespace(name)


def _node_is_ready(node: client.V1Node) -> bool:
    conditions = node.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@pytest.fixture
def fake_pool(core_v1: client.CoreV1Api, leftovers: Leftovers) -> Iterator[Callable[[str], PoolHandle]]:
    """Factory: `fake_pool("small.yaml")` applies a pool file (from examples/pools or a path).

    The nodes get a unique name prefix and pool label, the call returns when kwok reports them all
    Ready, and they are deleted at the end of the session (see ``Leftovers``).
    """
    applied: list[PoolFile] = []

    def apply(pool_file: str) -> PoolHandle:
        existing = os.environ.get("DSPOOL_EXISTING_POOL")
        if existing:
            nodes = core_v1.list_node(label_selector=f"{POOL_LABEL}={existing}").items
            return PoolHandle(existing, [n.metadata.name for n in nodes])
        path = Path(pool_file) if Path(pool_file).exists() else POOLS_DIR / pool_file
        unique = f"pool-{uuid.uuid4().hex[:8]}"  # short: node names must stay within 63 characters
        pool = load_pool(path).model_copy(update={"name": unique, "name_prefix": f"{unique}-"})
        applied.append(pool)
        apply_pool(core_v1, pool)
        names = [node["metadata"]["name"] for node in node_manifests(pool)]

        def all_ready() -> bool:
            nodes = core_v1.list_node(label_selector=f"{POOL_LABEL}={unique}").items
            return len(nodes) == len(names) and all(_node_is_ready(n) for n in nodes)

        wait_for(all_ready, 60, f"the {len(names)} nodes of pool {unique} to be Ready (kwok manages them)")
        return PoolHandle(unique, names)

    yield apply
    for pool in applied:
        leftovers.delete_pool_later(pool)


@pytest.fixture(scope="session")
def crd_installed(kubeconfig: str, api_client: client.ApiClient) -> None:
    """The DeepSeekDeployment CRD from crds/, installed (or updated) and Established."""
    with cluster_lock(kubeconfig, "crd-install"):  # two workers' read-then-replace would conflict
        install_crd(api_client, timeout=30)


@pytest.fixture(scope="session")
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    """The custom-objects API."""
    return client.CustomObjectsApi(api_client)


class OperatorProcess:
    """A ``dspool run`` subprocess scoped to one namespace and one pool."""

    def __init__(self, kubeconfig: str, namespace: str, pool: str, log_path: Path) -> None:
        with socket.socket() as probe:  # a free port for /metrics
            probe.bind(("127.0.0.1", 0))
            self.metrics_port = probe.getsockname()[1]
        self.args = [
            sys.executable, "-m", "dspool", "run", "--namespace", namespace,
            "--node-selector", f"dspool.io/pool={pool}", "--liveness-port", "0",
            "--resync-seconds", "3", "--stuck-after-seconds", "30", "--node-grace-seconds", "5",
            "--lease-namespace", namespace, "--lease-name", f"dspool-{pool}",
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        self.env = {**os.environ, "KUBECONFIG": kubeconfig}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the operator."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, kill: bool = False) -> None:
        """Stop it: SIGKILL simulates a crash, SIGTERM a clean shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metrics(self) -> str:
        """The Prometheus text the operator serves."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self) -> str:
        """The last lines of its log, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def start_operator(
    kubeconfig: str, namespace: str, crd_installed: None, tmp_path: Path
) -> Iterator[Callable[[PoolHandle], OperatorProcess]]:
    """Factory: start the operator for this test's namespace and a pool; stopped after the test."""
    started: list[OperatorProcess] = []

    def start(pool: PoolHandle) -> OperatorProcess:
        operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / "operator.log")
        operator.start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


PoolOf = Callable[[str, str], PoolHandle]
OperatorOn = Callable[[str, str], tuple[PoolHandle, OperatorProcess]]


@pytest.fixture
def pool_of(tmp_path: Path, fake_pool: Callable[[str], PoolHandle]) -> PoolOf:
    """Factory: `pool_of(name, groups_yaml)` applies a pool of fake nodes for this test."""
    return lambda name, groups: fake_pool(write_pool(tmp_path, name, groups))


@pytest.fixture
def operator_on(pool_of: PoolOf, start_operator: Callable[[PoolHandle], OperatorProcess]) -> OperatorOn:
    """Factory: `operator_on(name, groups_yaml)` applies a pool and starts an operator limited to it."""

    def make(name: str, groups: str) -> tuple[PoolHandle, OperatorProcess]:
        pool = pool_of(name, groups)
        return pool, start_operator(pool)

    return make


def write_pool(tmp_path: Path, name: str, groups: str) -> str:
    """A pool file with the given groups (YAML list items)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ngroups:\n" + textwrap.indent(textwrap.dedent(groups).strip(), "  ") + "\n")
    return str(path)


def lws(action: str) -> None:
    """`e2e/cluster.py lws install|remove` on the local control plane (nothing on an existing cluster)."""
    if os.environ.get("DSPOOL_KUBECONFIG"):
        return  # an existing cluster: LWS is what it is
    done = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "lws", action], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"`e2e/cluster.py lws {action}` failed:\n{done.stdout}{done.stderr}")


@pytest.fixture
def lws_installed() -> Iterator[None]:
    """LWS as `make cluster-up` installs it (reinstalled afterwards if a test removed it)."""
    lws("install")
    yield
    lws("install")
