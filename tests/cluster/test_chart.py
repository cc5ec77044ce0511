"""The Helm chart on the real API server: lint, render, server-side dry run, install, and RBAC proven.

Helm is built from its pinned Go module by ``e2e/tools.py`` (cached beside the control plane). The RBAC
proof runs the dspool wheel, installed into a clean venv, in in-cluster mode under the chart's
ServiceAccount: a token minted with TokenRequest and mounted (in a private mount namespace) where a pod
finds it, ``/var/run/secrets/kubernetes.io/serviceaccount``. It goes through a whole scenario and its log
must hold no ``Forbidden``; the same token is then refused what it must not do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLUSTER_DIR, REPO_ROOT, Leftovers, cluster_lock, file_lock, unique_name, wait_for, write_pool
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_operator import (
    assert_no_node_oversubscribed,
    create_dsd,
    get_dsd,
    has_event,
    kubectl_path,
    placed_nodes,
    pods_of,
    wait_phase,
)

from dspool import api
from dspool.sim.fleet import PoolHandle

CHART = REPO_ROOT / "charts" / "dspool"
CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "monitoring": [
        "--set", "monitoring.serviceMonitor.enabled=true",
        "--set", "monitoring.prometheusRule.enabled=true",
        "--set", "monitoring.dashboards.enabled=true",
        "--set", "monitoring.podMonitor.enabled=true",
    ],
    "watch-namespaces": ["--set", "watchNamespaces={WATCHED}", "--set", "replicaCount=2"],
    "custom-catalog": ["-f", str(REPO_ROOT / "tests" / "cluster" / "data" / "site-catalog-values.yaml")],
    "overrides": ["-f", str(REPO_ROOT / "tests" / "cluster" / "data" / "enterprise-overrides-values.yaml")],
}  # fmt: skip


def _load_tools() -> Any:
    spec = importlib.util.spec_from_file_location("dspool_e2e_tools", REPO_ROOT / "e2e" / "tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


TOOLS = _load_tools()


@pytest.fixture(scope="session")
def helm(kubeconfig: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run helm (built on first use) against the cluster under test."""
    binary = str(TOOLS.binary("helm"))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([binary, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    return run


@pytest.fixture(scope="session")
def monitoring_crds(kubeconfig: str) -> None:
    """The ServiceMonitor, PodMonitor and PrometheusRule CRDs of the pinned prometheus-operator."""
    with cluster_lock(kubeconfig, "monitoring-crds"):
        apply_monitoring_crds(kubeconfig)


def apply_monitoring_crds(kubeconfig: str) -> None:
    """Apply the pinned prometheus-operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule), Established."""
    for path in TOOLS.prometheus_operator_crds():
        subprocess.run([kubectl_path(), "--kubeconfig", kubeconfig, "apply", "--server-side", "-f", str(path)],
                       check=True, capture_output=True)  # fmt: skip
    for name in ("servicemonitors", "podmonitors", "prometheusrules"):
        crd = f"crd/{name}.monitoring.coreos.com"
        wait = [kubectl_path(), "--kubeconfig", kubeconfig, "wait", "--for=condition=Established", crd, "--timeout=60s"]
        subprocess.run(wait, check=True, capture_output=True)


def value_args(value_set: str, watched: str = "watched-a,watched-b") -> list[str]:
    """The helm flags of a named value set."""
    return [arg.replace("{WATCHED}", "{" + watched + "}") for arg in VALUE_SETS[value_set]]


def rendered(
    helm: Callable[..., Any], value_set: str, namespace: str, watched: str = "watched-a,watched-b"
) -> list[Any]:
    """The objects `helm template` renders for a value set."""
    done = helm("template", "t", str(CHART), "-n", namespace, *value_args(value_set, watched))
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_chart_lints_strict(helm: Callable[..., Any], value_set: str) -> None:
    done = helm("lint", "--strict", str(CHART), *value_args(value_set))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "replicaCount=two"], "/replicaCount"),
        (["--set", "operator.logLevel=loud"], "/operator/logLevel"),
        (["--set", "engineImages.sglang=x"], "additional properties 'sglang' not allowed"),
        (["--set", "catalog.accelerators[0].id=X", "--set", "catalog.accelerators[0].memoryGiB=lots"], "memoryGiB"),
    ],
)
def test_unknown_or_mistyped_values_fail_with_a_message(
    helm: Callable[..., Any], args: list[str], message: str
) -> None:
    done = helm("template", "t", str(CHART), *args, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_the_operator_pod_is_restricted_and_runs_dspool_run_flags(helm: Callable[..., Any]) -> None:
    [deployment] = [o for o in rendered(helm, "watch-namespaces", "dspool-system") if o["kind"] == "Deployment"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"} and deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "--namespace=watched-a" in container["args"] and "--namespace=watched-b" in container["args"]
    assert container["livenessProbe"]["httpGet"]["port"] == "healthz"


def test_rbac_has_no_wildcards_secrets_or_node_writes(helm: Callable[..., Any]) -> None:
    for value_set in ("defaults", "watch-namespaces"):
        for obj in rendered(helm, value_set, "dspool-system"):
            if obj["kind"] not in ("ClusterRole", "Role") or obj["metadata"]["name"].endswith(("-edit", "-view")):
                continue
            for rule in obj["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "secrets" not in rule["resources"], rule
                if "nodes" in rule["resources"] or "pods" in rule["resources"]:
                    assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in rendered(helm, "watch-namespaces", "dspool-system")}
    assert ("RoleBinding", "watched-a") in kinds and ("RoleBinding", "watched-b") in kinds
    assert ("Role", "dspool-system") in kinds  # the Lease, in the release namespace only


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_rendered_object_is_accepted_by_the_api_server(
    helm: Callable[..., Any], kubeconfig: str, core_v1: client.CoreV1Api, monitoring_crds: None, value_set: str
) -> None:
    release_ns, watched_a, watched_b = (unique_name(f"chart-{value_set}-{part}") for part in ("rel", "a", "b"))
    for name in (release_ns, watched_a, watched_b):
        core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        objects = rendered(helm, value_set, release_ns, f"{watched_a},{watched_b}")
        manifest = "\n---\n".join(yaml.safe_dump(o) for o in objects)
        done = subprocess.run(
            [kubectl_path(), "--kubeconfig", kubeconfig, "apply", "--server-side", "--dry-run=server", "-f", "-"],
            input=manifest, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("serverside-applied (server dry run)") == len(objects), done.stdout
        kinds = {o["kind"] for o in objects}
        if value_set == "monitoring":
            assert {"ServiceMonitor", "PrometheusRule"} <= kinds
        if value_set == "custom-catalog":
            [catalog] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-catalog")]
            assert "H20-141G-site" in catalog["data"]["catalog.yaml"]
    finally:
        for name in (release_ns, watched_a, watched_b):
            core_v1.delete_namespace(name)


def test_the_site_catalog_of_the_values_loads_in_dspool(tmp_path: Path) -> None:
    from dspool.catalog import load_catalog

    values = yaml.safe_load((REPO_ROOT / "tests" / "cluster" / "data" / "site-catalog-values.yaml").read_text())
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(values["catalog"]))
    assert load_catalog(path).accelerator("H20-141G-site").memory_gib == 140


# ------------------------------------------------------------------------------ install and uninstall


def _no_dsds_anywhere(custom: client.CustomObjectsApi) -> bool:
    try:
        return not custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
    except ApiException as exc:
        return bool(exc.status == 404)


@pytest.mark.serial  # deletes dspool's CRD (and so every DSD) when no DSD is left: not under other tests
def test_helm_install_creates_the_crd_and_an_admitted_operator_pod_under_restricted_security(
    helm: Callable[..., Any], api_client: client.ApiClient, core_v1: client.CoreV1Api, apps_v1: client.AppsV1Api,
    no_namespace_being_deleted: None,
) -> None:  # fmt: skip
    ext = client.ApiextensionsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    if _no_dsds_anywhere(custom):  # nothing to lose: let helm install the CRD itself
        try:
            ext.delete_custom_resource_definition(CRD_NAME)
            wait_for(lambda: _crd_gone(ext), 60, "the CRD to be deleted before the install")
        except ApiException as exc:
            assert exc.status == 404
    release, ns = unique_name("dspool"), unique_name("dspool-system")
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=labels)))
    try:
        # (the CRD upgrade hook's pod cannot run on kwok's nodes: test_helm_upgrade_applies_a_changed_crd_... runs it)
        done = helm("install", release, str(CHART), "-n", ns, "--wait=false", "--set", "crdUpgrade.enabled=false")
        assert "kubectl get crd deepseekdeployments.dspool.io" in done.stdout  # NOTES.txt
        crd = ext.read_custom_resource_definition(CRD_NAME)
        assert crd.spec.names.short_names == ["dsd"]
        deployment = apps_v1.read_namespaced_deployment(release, ns)
        assert deployment.spec.template.spec.service_account_name == release
        assert core_v1.read_namespaced_service(f"{release}-metrics", ns).spec.ports[0].port == 8081

        # The ReplicaSet's pod passes the namespace's restricted Pod Security admission.
        def pod_created() -> list[client.V1Pod]:
            pods: list[client.V1Pod] = core_v1.list_namespaced_pod(
                ns, label_selector=f"app.kubernetes.io/instance={release}"
            ).items
            return pods

        wait_for(pod_created, 60, "the operator pod to be admitted in the restricted namespace")
        events = core_v1.list_namespaced_event(ns).items
        assert not [e for e in events if e.reason == "FailedCreate"], [e.message for e in events]
    finally:
        helm("uninstall", release, "-n", ns, check=False)
        core_v1.delete_namespace(ns)
    assert ext.read_custom_resource_definition(CRD_NAME)  # helm keeps CRDs on uninstall


def _crd_gone(ext: client.ApiextensionsV1Api) -> bool:
    try:
        ext.read_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


# ------------------------------------------------------------------------------ RBAC, proven


WHEEL_INPUTS = ("pyproject.toml", "README.md", "operator")
WHEEL_VENVS_KEPT_DAYS = 2


def wheel_inputs_digest() -> str:
    """Hash of everything the wheel is built from (and of the Python that builds it)."""
    digest = hashlib.sha256(sys.version.encode())
    for top in WHEEL_INPUTS:
        root = REPO_ROOT / top
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts):
                continue
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with only the dspool wheel (and its dependencies) installed: what the image holds.

    Built once for each content of the sources and kept in dspool's cache (``tools/test-wheel-venv/<hash>``),
    so that the parallel workers and the serial session of one run, and the next run when nothing changed,
    do not build it again (30 s); venvs unused for two days are removed.
    """
    cache: Path = TOOLS.cache_root() / "tools" / "test-wheel-venv"
    venv = cache / wheel_inputs_digest()
    with file_lock(cache / "build.lock"):
        if not (venv / "bin" / "dspool").exists():
            root = tmp_path_factory.mktemp("wheel")
            subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(root / "dist"), str(REPO_ROOT)],
                           check=True, capture_output=True)  # fmt: skip
            [wheel] = (root / "dist").glob("dspool-*.whl")
            shutil.rmtree(venv, ignore_errors=True)  # what an interrupted build left
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
        venv.touch()
        for old in cache.iterdir():
            if old.is_dir() and old != venv and time.time() - old.stat().st_mtime > WHEEL_VENVS_KEPT_DAYS * 86400:
                shutil.rmtree(old, ignore_errors=True)
    return venv


@dataclass
class Installed:
    """A helm release and the identity of its ServiceAccount."""

    release: str
    namespace: str
    service_account: str


def mint_token(core_v1: client.CoreV1Api, installed: Installed) -> str:
    """A TokenRequest token for the chart's ServiceAccount, as the kubelet mints for a pod."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    response = core_v1.create_namespaced_service_account_token(installed.service_account, installed.namespace, request)
    return str(response.status.token)


def api_server_port() -> int:
    """The local API server's port (the in-cluster process reaches it as KUBERNETES_SERVICE_HOST:PORT)."""
    state = json.loads((CLUSTER_DIR / "state.json").read_text())
    return int(state["ports"]["kube-apiserver"])


class InClusterOperator:
    """``dspool run`` from the wheel, configured the way a pod is: service-account files and env only."""

    def __init__(self, venv: Path, token: str, installed: Installed, args: list[str], log_path: Path) -> None:
        self.secrets = log_path.parent / f"serviceaccount-{uuid.uuid4().hex[:6]}"
        self.secrets.mkdir()
        (self.secrets / "token").write_text(token)
        shutil.copy(CLUSTER_DIR / "pki" / "ca.crt", self.secrets / "ca.crt")
        (self.secrets / "namespace").write_text(installed.namespace)
        mount = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run is /run
        # A private mount namespace with a fresh /run: the host's /run is untouched.
        script = f'mount -t tmpfs tmpfs /run && mkdir -p {mount} && cp {self.secrets}/* {mount}/ && exec "$@"'
        self.command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                        str(venv / "bin" / "dspool"), "run", *args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "VIRTUAL_ENV", "PYTHONPATH")}
        self.env = {**env, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_server_port()),
                    "POD_NAMESPACE": installed.namespace, "HOME": str(log_path.parent)}  # fmt: skip
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """Stop it cleanly (it hands the Lease over)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        """Everything it logged."""
        return self.log_path.read_text(errors="replace")


def can_unshare() -> bool:
    """Whether this user can make a private mount namespace (root, or user namespaces allowed)."""
    done = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def install(
    helm: Callable[..., Any], core_v1: client.CoreV1Api, leftovers: Leftovers
) -> Iterator[Callable[..., Installed]]:
    """Factory: `install(*helm_args)` installs the chart as a fresh release in a fresh namespace."""
    releases: list[Installed] = []

    def make(*args: str, release: str | None = None, namespace: str | None = None) -> Installed:
        release = release or unique_name("dspool")
        if namespace is None:
            namespace = unique_name("dspool-system")
            core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        helm("install", release, str(CHART), "-n", namespace, "--set", "replicaCount=0",
             "--set", "crdUpgrade.enabled=false", *args)  # fmt: skip
        installed = Installed(release, namespace, release)
        releases.append(installed)
        return installed

    yield make
    for installed in releases:
        helm("uninstall", installed.release, "-n", installed.namespace, check=False)
    for namespace in {installed.namespace for installed in releases}:
        leftovers.delete_namespace(namespace)


def operator_args(pool: PoolHandle, *namespaces: str) -> list[str]:
    """`dspool run` flags for one test pool (the chart's defaults, e.g. its Lease name, plus test speed-ups)."""
    watched = [f"--namespace={ns}" for ns in namespaces]
    return [*watched, f"--node-selector=dspool.io/pool={pool.name}", "--liveness-port=0", "--metrics-port=0",
            "--resync-seconds=3", "--stuck-after-seconds=30", "--node-grace-seconds=5"]  # fmt: skip


@pytest.mark.skipif(not can_unshare(), reason="needs a private mount namespace (unshare --mount) for the token")
def test_the_chart_identity_runs_a_whole_scenario_without_one_forbidden_and_is_refused_the_rest(
    install: Callable[..., Installed], wheel_venv: Path, fake_pool: Callable[[str], PoolHandle],
    api_client: client.ApiClient, core_v1: client.CoreV1Api, apps_v1: client.AppsV1Api,
    namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    custom = client.CustomObjectsApi(api_client)
    other = unique_name("not-watched")
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        installed = install("--set", f"watchNamespaces={{{namespace}}}")
        pool = fake_pool(write_pool(tmp_path, "rbac", """
            - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
            - {name: rtx, count: 2, accelerator: RTX4090-24G, devicesPerNode: 4}
        """))  # fmt: skip
        token = mint_token(core_v1, installed)
        operator = InClusterOperator(wheel_venv, token, installed, operator_args(pool, namespace), tmp_path / "op.log")
        operator.start()
        try:
            _scenario(custom, core_v1, apps_v1, namespace, pool, installed, operator)
        finally:
            operator.stop()
        log = operator.log()
        assert "connected" in log, log[-3000:]
        assert "Forbidden" not in log and " 403" not in log, [line for line in log.splitlines() if "403" in line]
        _refused_what_it_must_not_do(token, core_v1, namespace, other, pool)
    finally:
        core_v1.delete_namespace(other)


def _scenario(
    custom: client.CustomObjectsApi, core_v1: client.CoreV1Api, apps_v1: client.AppsV1Api, namespace: str,
    pool: PoolHandle, installed: Installed, operator: InClusterOperator,
) -> None:  # fmt: skip
    # A single-node model and a multi-node one (R1 on 2 x 8 H100 as one gang; StatefulSets, no LWS here).
    create_dsd(custom, namespace, "small", {"model": "deepseek-r1-distill-qwen-7b", "replicas": 1})
    create_dsd(custom, namespace, "r1", {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H100-80G"]}})
    wait_phase(custom, namespace, "small", "Ready", 120)
    r1 = wait_phase(custom, namespace, "r1", "Ready", 120)
    assert len(placed_nodes(r1)[0]) == 2, operator.log()[-3000:]
    assert apps_v1.list_namespaced_stateful_set(namespace).items
    # Scale through the scale subresource, then lose the node of one replica.
    custom.patch_namespaced_custom_object_scale(api.GROUP, api.VERSION, namespace, api.PLURAL, "small",
                                                {"spec": {"replicas": 2}})  # fmt: skip
    wait_for(lambda: len(get_dsd(custom, namespace, "small")["status"].get("placements", [])) == 2, 60, "scale to 2")
    small = wait_phase(custom, namespace, "small", "Ready", 90)
    lost = placed_nodes(small)[0][0][0]
    core_v1.delete_node(lost)
    wait_for(lambda: has_event(core_v1, namespace, "small", "ReplicaLost", "Warning"), 60, "a ReplicaLost event")
    wait_for(
        lambda: all(lost not in [n for n, _ in p] for p in placed_nodes(get_dsd(custom, namespace, "small"))),
        90, "the lost replica to be placed elsewhere",
    )  # fmt: skip
    assert_no_node_oversubscribed(core_v1, PoolHandle(pool.name, [n for n in pool.node_names if n != lost]))
    # The Lease is held in the release namespace.
    lease = client.CoordinationV1Api(core_v1.api_client).read_namespaced_lease("dspool-operator", installed.namespace)
    assert lease.spec.holder_identity
    # Deleting a DSD removes its workloads (owner references, the garbage collector).
    custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "r1")
    wait_for(lambda: pods_of(core_v1, namespace, "r1") == [], 60, "the R1 pods to be garbage-collected")
    time.sleep(5)  # a few more passes: stale-object clean-up, events, status


def _refused_what_it_must_not_do(token: str, core_v1: client.CoreV1Api, watched: str, other: str,
                                 pool: PoolHandle) -> None:  # fmt: skip
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{api_server_port()}"
    configuration.ssl_ca_cert = str(CLUSTER_DIR / "pki" / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    as_operator = client.ApiClient(configuration)
    core, apps = client.CoreV1Api(as_operator), client.AppsV1Api(as_operator)
    custom = client.CustomObjectsApi(as_operator)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "intruder"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "c", "image": "x"}]}}}}  # fmt: skip
    attempts: dict[str, Callable[[], Any]] = {
        "read Secrets": lambda: core.list_namespaced_secret(watched),
        "read Secrets cluster-wide": lambda: core.list_secret_for_all_namespaces(),
        "delete a Node": lambda: core.delete_node(pool.node_names[0]),
        "patch a Node": lambda: core.patch_node(pool.node_names[0], {"metadata": {"labels": {"x": "y"}}}),
        "create a Deployment outside watchNamespaces": lambda: apps.create_namespaced_deployment(other, deployment),
        "post an Event outside watchNamespaces": lambda: core.create_namespaced_event(
            other, {"metadata": {"generateName": "x."}, "involvedObject": {"name": "x", "namespace": other}}
        ),
        "patch a DSD's status outside watchNamespaces": lambda: custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, other, api.PLURAL, "any", {"status": {}}
        ),
        "delete pods": lambda: core.delete_collection_namespaced_pod(watched),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ApiException) as refused:
            attempt()
        assert refused.value.status == 403, f"{what}: {refused.value.status} {refused.value.reason}"
    assert core.list_node(label_selector=f"dspool.io/pool={pool.name}").items  # what it may do, it can


@pytest.mark.skipif(not can_unshare(), reason="needs a private mount namespace (unshare --mount) for the token")
def test_uninstall_keeps_the_crd_and_dsds_and_a_reinstall_moves_nothing(
    helm: Callable[..., Any], install: Callable[..., Installed], wheel_venv: Path,
    fake_pool: Callable[[str], PoolHandle], api_client: client.ApiClient, core_v1: client.CoreV1Api,
    namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    custom = client.CustomObjectsApi(api_client)
    pool = fake_pool(write_pool(tmp_path, "reinstall", """
        - {name: l20, count: 2, accelerator: L20-48G}
    """))  # fmt: skip
    watched = f"watchNamespaces={{{namespace}}}"  # other namespaces' DSDs (a demo, say) are not this test's
    first = install("--set", watched)
    args = operator_args(pool, namespace)
    operator = InClusterOperator(wheel_venv, mint_token(core_v1, first), first, args, tmp_path / "1.log")
    operator.start()
    try:
        create_dsd(custom, namespace, "d32", {"model": "deepseek-r1-distill-qwen-32b", "replicas": 3})
        before = placed_nodes(wait_phase(custom, namespace, "d32", "Ready", 120))
    finally:
        operator.stop()
    helm("uninstall", first.release, "-n", first.namespace)
    assert client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    assert placed_nodes(get_dsd(custom, namespace, "d32")) == before  # the DSD and its reservations stay
    # Install again (same release name and namespace, as an upgrade-by-reinstall does) and run the operator.
    again = install("--set", watched, release=first.release, namespace=first.namespace)
    operator = InClusterOperator(wheel_venv, mint_token(core_v1, again), again, args, tmp_path / "2.log")
    operator.start()
    try:
        wait_for(lambda: "connected" in operator.log(), 60, "the reinstalled operator to connect")
        time.sleep(8)  # several passes
        after = wait_phase(custom, namespace, "d32", "Ready", 60)
    finally:
        operator.stop()
    assert placed_nodes(after) == before, "a reinstall moved replicas"
    assert "Forbidden" not in operator.log()


# ------------------------------------------------------------------------------ enterprise overrides


def test_the_enterprise_overrides_render_names_security_pull_secrets_pdb_spread_and_alert_options(
    helm: Callable[..., Any],
) -> None:
    objects = rendered(helm, "overrides", "dspool-system")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    [deployment] = by_kind["Deployment"]
    assert deployment["metadata"]["name"] == "llm-pool-operator"
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "llm-pool"
    pod = deployment["spec"]["template"]["spec"]
    # OpenShift: no UID, GID or fsGroup of the chart's; the rest stays restricted
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    [container] = pod["containers"]
    assert "runAsUser" not in container["securityContext"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert pod["imagePullSecrets"] == [{"name": "mirror-creds"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DSPOOL_IMAGE_PULL_SECRETS"] == "mirror-creds,ngc-creds"  # the engine and fetch pods'
    assert env["DSPOOL_IMAGE_VLLM"] == "mirror.example.internal/vllm/vllm-openai:v0.11.0"
    assert env["HTTPS_PROXY"] == "http://proxy.example.internal:3128"
    [spread] = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    [pdb] = by_kind["PodDisruptionBudget"]
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }
    [rule] = by_kind["PrometheusRule"]
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert "DspoolStrandedDevicesWhileReplicasWait" not in alerts
    assert alerts["DspoolDeploymentStuck"]["for"] == "30m"
    assert alerts["DspoolKVCacheSaturated"]["labels"] == {"severity": "warning", "team": "ml-platform"}
    assert alerts["DspoolKVCacheSaturated"]["annotations"]["runbook_url"] == (
        "https://wiki.example.internal/runbooks/dspool#dspoolkvcachesaturated"
    )
    [monitor] = by_kind["ServiceMonitor"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True and endpoint["scrapeTimeout"] == "10s"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    # no PDB with a single operator; the defaults keep the restricted UID
    defaults = rendered(helm, "defaults", "dspool-system")
    assert not [o for o in defaults if o["kind"] == "PodDisruptionBudget"]
    [default_deployment] = [o for o in defaults if o["kind"] == "Deployment"]
    assert default_deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532


def test_the_overrides_install_and_the_operator_pod_is_admitted_in_a_restricted_namespace(
    helm: Callable[..., Any], core_v1: client.CoreV1Api, apps_v1: client.AppsV1Api, monitoring_crds: None,
) -> None:  # fmt: skip
    release, ns = unique_name("ent"), unique_name("dspool-system")
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=labels)))
    try:
        helm("install", release, str(CHART), "-n", ns, "--wait=false", "--set", "crdUpgrade.enabled=false",
             *value_args("overrides"))  # fmt: skip
        assert apps_v1.read_namespaced_deployment("llm-pool-operator", ns).spec.replicas == 2
        assert client.PolicyV1Api(core_v1.api_client).read_namespaced_pod_disruption_budget("llm-pool-operator", ns)

        def pods() -> list[client.V1Pod]:
            found: list[client.V1Pod] = core_v1.list_namespaced_pod(
                ns, label_selector="app.kubernetes.io/name=llm-pool"
            ).items
            return found if len(found) == 2 else []

        admitted = wait_for(pods, 60, "both operator pods to be admitted under restricted Pod Security")
        assert all(p.spec.security_context.run_as_user is None for p in admitted)
    finally:
        helm("uninstall", release, "-n", ns, check=False)
        core_v1.delete_namespace(ns)


# ------------------------------------------------------------------------------ CRD upgrades on helm upgrade


def test_the_crd_upgrade_hook_is_scoped_to_dspool_crds_and_removable(helm: Callable[..., Any]) -> None:
    objects = rendered(helm, "defaults", "dspool-system")
    hooks = [o for o in objects if (o["metadata"].get("annotations") or {}).get("helm.sh/hook")]
    assert {o["kind"] for o in hooks} == {"ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Job"}
    assert all(o["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade" for o in hooks)
    [role] = [o for o in hooks if o["kind"] == "ClusterRole"]
    assert role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                              "resourceNames": [CRD_NAME], "verbs": ["get", "create", "patch"]}]  # fmt: skip
    [config_map] = [o for o in hooks if o["kind"] == "ConfigMap"]
    assert yaml.safe_load(config_map["data"]["deepseekdeployments.yaml"]) == yaml.safe_load(
        (CHART / "crds" / "deepseekdeployments.yaml").read_text()
    )
    [job] = [o for o in hooks if o["kind"] == "Job"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "dspool/operator:0.1.0"  # dspool's own image: nothing to download
    assert container["command"] == ["python", "-m", "dspool.crd_upgrade", "/etc/dspool/crds"]
    done = helm("template", "t", str(CHART), "--set", "crdUpgrade.enabled=false")
    assert "crd-upgrade" not in done.stdout


def _older_crd() -> dict[str, Any]:
    """The CRD as an older release shipped it: a printer column and a spec field (scaling) fewer."""
    from dspool.crdgen import build_crd

    crd = build_crd()
    version = crd["spec"]["versions"][0]
    version["additionalPrinterColumns"] = version["additionalPrinterColumns"][:-1]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"].pop("scaling", None)
    return crd


class PlayedKubelet:
    """Runs the hook Job's pod the way a kubelet would, against the local cluster: its command from the dspool
    wheel (what the image holds), its ConfigMap volume as files, its ServiceAccount's token; then reports the
    pod's exit in its status (kwok's nodes run nothing, so the pod is kept Pending by a nodeSelector no node
    matches)."""

    def __init__(self, core_v1: client.CoreV1Api, namespace: str, venv: Path, workdir: Path) -> None:
        self.core_v1, self.namespace, self.venv, self.workdir = core_v1, namespace, venv, workdir
        self.output = ""
        self.token = ""

    def pending_pod(self) -> client.V1Pod | None:
        pods = self.core_v1.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=crd-upgrade"
        ).items
        return pods[0] if pods and pods[0].status.phase == "Pending" else None

    def run(self, pod: client.V1Pod) -> int:
        [container] = pod.spec.containers
        mounts = {m.mount_path: m.name for m in container.volume_mounts}
        volumes = {v.name: v for v in pod.spec.volumes}
        files = self.workdir / "crds"
        files.mkdir(exist_ok=True)
        config_map = self.core_v1.read_namespaced_config_map(volumes[mounts["/etc/dspool/crds"]].config_map.name,
                                                             self.namespace)  # fmt: skip
        for name, text in config_map.data.items():
            (files / name).write_text(text)
        installed = Installed("", self.namespace, pod.spec.service_account_name)
        self.token = mint_token(self.core_v1, installed)
        kubeconfig = self.workdir / "hook-kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "hook",
            "clusters": [{"name": "local", "cluster": {
                "server": f"https://127.0.0.1:{api_server_port()}",
                "certificate-authority": str(CLUSTER_DIR / "pki" / "ca.crt")}}],
            "users": [{"name": "hook", "user": {"token": self.token}}],
            "contexts": [{"name": "hook", "context": {"cluster": "local", "user": "hook"}}],
        }))  # fmt: skip
        assert container.command[:3] == ["python", "-m", "dspool.crd_upgrade"]
        args = [str(files) if a == "/etc/dspool/crds" else a for a in container.command[3:]]
        done = subprocess.run([str(self.venv / "bin" / "python"), "-m", "dspool.crd_upgrade", *args,
                               "--kubeconfig", str(kubeconfig)], capture_output=True, text=True)  # fmt: skip
        self.output = done.stdout + done.stderr
        return done.returncode

    def report(self, pod: client.V1Pod, exit_code: int) -> None:
        phase = "Succeeded" if exit_code == 0 else "Failed"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "startedAt": now, "finishedAt": now}  # fmt: skip
        status = {"status": {"phase": phase, "containerStatuses": [
            {"name": "crd-upgrade", "image": pod.spec.containers[0].image, "imageID": "", "ready": False,
             "restartCount": 0, "state": {"terminated": terminated}}]}}  # fmt: skip
        self.core_v1.patch_namespaced_pod_status(pod.metadata.name, self.namespace, status)


@pytest.mark.serial  # puts an older dspool CRD in place: other tests' DSDs would be checked against it
@pytest.mark.skipif(not can_unshare(), reason="builds the dspool wheel like the RBAC tests")
def test_helm_upgrade_applies_a_changed_crd_through_the_hook(
    helm: Callable[..., Any], api_client: client.ApiClient, core_v1: client.CoreV1Api, wheel_venv: Path,
    tmp_path: Path, kubeconfig: str,
) -> None:  # fmt: skip
    ext = client.ApiextensionsV1Api(api_client)
    release, ns = unique_name("crdup"), unique_name("dspool-system")
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    hook_values = ["--set", "replicaCount=0", "--set", "crdUpgrade.nodeSelector.dspool\\.io/hook-runner=none"]
    try:
        helm("install", release, str(CHART), "-n", ns, "--no-hooks", *hook_values)
        # The cluster holds the CRD of an older release.
        older = _older_crd()
        current = ext.read_custom_resource_definition(CRD_NAME)
        older["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(CRD_NAME, older)
        stored = api_client.sanitize_for_serialization(ext.read_custom_resource_definition(CRD_NAME))
        assert "scaling" not in stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "properties"]  # fmt: skip

        upgrade = subprocess.Popen(
            [str(TOOLS.binary("helm")), "--kubeconfig", kubeconfig, "upgrade", release, str(CHART), "-n", ns,
             "--timeout", "180s", *hook_values], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        kubelet = PlayedKubelet(core_v1, ns, wheel_venv, tmp_path)
        pod = wait_for(kubelet.pending_pod, 90, "helm upgrade to create the hook Job's pod")
        exit_code = kubelet.run(pod)
        assert exit_code == 0, kubelet.output
        assert f"updated {CRD_NAME}" in kubelet.output, kubelet.output
        # The hook's identity may touch dspool's CRDs only.
        as_hook = client.Configuration()
        as_hook.host = f"https://127.0.0.1:{api_server_port()}"
        as_hook.ssl_ca_cert = str(CLUSTER_DIR / "pki" / "ca.crt")
        as_hook.api_key = {"authorization": f"Bearer {kubelet.token}"}
        hook_ext = client.ApiextensionsV1Api(client.ApiClient(as_hook))
        with pytest.raises(ApiException) as refused:
            hook_ext.patch_custom_resource_definition("leaderworkersets.leaderworkerset.x-k8s.io",
                                                      {"metadata": {"labels": {"x": "y"}}})  # fmt: skip
        assert refused.value.status == 403
        kubelet.report(pod, exit_code)
        output, _ = upgrade.communicate(timeout=180)
        assert upgrade.returncode == 0, output
        # the hook's objects are gone once it succeeded (hook-delete-policy hook-succeeded)
        assert not [c for c in core_v1.list_namespaced_config_map(ns).items if "crd-upgrade" in c.metadata.name]
        assert not client.BatchV1Api(api_client).list_namespaced_job(ns).items
    finally:
        helm("uninstall", release, "-n", ns, check=False)
        core_v1.delete_namespace(ns)

    from dspool.crdgen import build_crd

    applied = api_client.sanitize_for_serialization(ext.read_custom_resource_definition(CRD_NAME))
    expected = build_crd()["spec"]["versions"][0]
    version = applied["spec"]["versions"][0]
    assert version["additionalPrinterColumns"] == expected["additionalPrinterColumns"]
    assert "scaling" in version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    managers = {entry["manager"] for entry in applied["metadata"]["managedFields"]}
    assert "dspool-crd-upgrade" in managers
