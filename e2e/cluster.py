#!/usr/bin/env python3
"""A real Kubernetes control plane on this machine, for tests, CI and the demo.

    python e2e/cluster.py build    # compile etcd, kube-apiserver, -controller-manager, -scheduler,
                                   # kubectl and kwok once, into a versioned cache outside the repo
    python e2e/cluster.py up       # build if needed, then start everything on 127.0.0.1
    python e2e/cluster.py status   # show each component, its pid and whether it is alive
    python e2e/cluster.py down     # stop exactly what `up` started and remove .cluster/
    python e2e/cluster.py lws remove|install   # take the LeaderWorkerSet CRD away, or bring it back
    python e2e/cluster.py restart kube-apiserver [--hard]   # stop one component (SIGTERM, or SIGKILL
                                   # with --hard) and start it again on the same port; for fault tests

The versions are the ones pinned by the Go modules under e2e/controlplane/ (go.mod + go.sum), one
module per upstream so that their dependency graphs stay independent. Binaries are cached in
``$DSPOOL_CACHE`` or ``$XDG_CACHE_HOME/dspool`` (default ``~/.cache/dspool``) under
``controlplane-<kubernetes>-<etcd>-<kwok>/bin``; a stamp over the module files and the Go version
makes a warm second build a no-op.

State lives in ``.cluster/`` at the repo root (or in ``$DSPOOL_CLUSTER_DIR``: a second, independent
cluster of the same checkout, as ``make cluster-test`` starts for the tests that restart the API server or
swap CRDs): certificates, kubeconfigs, etcd data, ``logs/`` and ``pids/``. Fake nodes are simulated by
kwok: it manages only nodes annotated ``kwok.x-k8s.io/node=fake`` (see ``python e2e/fleet.py``), keeps them
Ready and moves the pods that kube-scheduler binds to them to Running/Ready.

The LeaderWorkerSet controller (``sigs.k8s.io/lws``, built by ``e2e/tools.py``) runs beside them, out of
cluster: its CRD and admission webhooks are installed at ``up``, the webhooks pointing at
``https://127.0.0.1:<port>`` with a serving certificate from the cluster CA (LWS's own certificate
rotation is for in-cluster Services and is turned off). Its pod webhooks only see pods labelled
``leaderworkerset.sigs.k8s.io/name``, as in LWS's chart, so other pods never depend on it.

Only the standard library and the ``openssl`` command are used, so this runs before any venv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tools
from buildcache import GO_BUILD_PARALLELISM, ClusterError, cache_root, exclusive_lock, go_command

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULES_DIR = REPO_ROOT / "e2e" / "controlplane"
STATE_DIR = Path(os.environ.get("DSPOOL_CLUSTER_DIR") or REPO_ROOT / ".cluster").resolve()
PKI_DIR = STATE_DIR / "pki"
LOG_DIR = STATE_DIR / "logs"
PID_DIR = STATE_DIR / "pids"
STATE_FILE = STATE_DIR / "state.json"
ADMIN_KUBECONFIG = STATE_DIR / "kubeconfig"

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# kwok hands out pod IPs from this range; nothing ever routes to them.
KWOK_POD_CIDR = "10.244.0.0/16"
KWOK_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"
# Order matters: each component needs the ones before it.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "lws-controller")
LWS_CRD_PATH = "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"
LWS_CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
LWS_WEBHOOKS = "dspool-local-lws"  # name of both webhook configurations
# Client rate for the controllers: the defaults (20/30 qps) crawl with thousands of fake nodes.
CONTROLLER_QPS, CONTROLLER_BURST = 300, 600

# Which binaries each Go module under e2e/controlplane/ builds, and from which package.
BUILD_TARGETS: dict[str, dict[str, str]] = {
    "kubernetes": {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    },
    "etcd": {"etcd": "go.etcd.io/etcd/server/v3"},
    "kwok": {"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
}
UPSTREAM_MODULES = {
    "kubernetes": "k8s.io/kubernetes",
    "etcd": "go.etcd.io/etcd/server/v3",
    "kwok": "sigs.k8s.io/kwok",
}
# kwok ships no default behaviour: these Stage manifests from its own release (the ones kwokctl uses)
# make managed nodes Ready with a lease heartbeat and take bound pods through Ready to deletion.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
KWOK_NODE_LEASE_SECONDS = 40
# A kubelet reports its pods Ready again once its node is back; kwok's own stages set Ready only once, on
# start. Without this, a node whose lease lapsed for a moment on a loaded machine (the node lifecycle
# controller then marks its pods NotReady) keeps its pods NotReady for good, and a replica there never
# becomes Ready. Written at every `up` (not part of the build stamp: no rebuild when it changes).
KWOK_POD_READY_AGAIN_STAGE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['False']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: PodScheduled
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
"""


# --------------------------------------------------------------------------------------------- build


def module_version(module: str) -> str:
    """Return the version of the upstream module that e2e/controlplane/<module>/go.mod requires."""
    go_mod = (MODULES_DIR / module / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(UPSTREAM_MODULES[module])}\s+(v\S+)", go_mod, re.M)
    if not match:
        raise ClusterError(f"{MODULES_DIR / module / 'go.mod'} does not require {UPSTREAM_MODULES[module]}")
    return match.group(1)


def toolchain_dir() -> Path:
    """Return the versioned directory that holds the built control plane."""
    versions = "-".join(module_version(m) for m in ("kubernetes", "etcd", "kwok"))
    return cache_root() / f"controlplane-{versions}"


def bin_dir() -> Path:
    """Return the directory holding the control-plane binaries and kubectl."""
    return toolchain_dir() / "bin"


def kwok_config_file() -> Path:
    """Return kwok's configuration (options and stages), written next to the binaries at build time."""
    return toolchain_dir() / "kwok-config.yaml"


def build_fingerprint(go: str) -> str:
    """Hash everything that decides the binaries: module files, Go version and build flags."""
    digest = hashlib.sha256()
    for module in sorted(BUILD_TARGETS):
        for name in ("go.mod", "go.sum", "tools.go"):
            digest.update((MODULES_DIR / module / name).read_bytes())
    digest.update(subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.encode())
    digest.update(json.dumps([BUILD_TARGETS, KWOK_STAGE_FILES, version_ldflags(module_version("kubernetes"))]).encode())
    return digest.hexdigest()


def version_ldflags(kubernetes_version: str) -> str:
    """Return -X flags that stamp the Kubernetes version the way upstream release builds do."""
    major, minor = kubernetes_version.lstrip("v").split(".")[:2]
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={kubernetes_version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
        ]
    return " ".join(flags)


def is_built() -> bool:
    """Tell whether every binary exists and the stamp matches the current module files."""
    stamp = toolchain_dir() / "stamp"
    binaries = [bin_dir() / name for targets in BUILD_TARGETS.values() for name in targets]
    if not stamp.exists() or not all(b.exists() for b in binaries) or not kwok_config_file().exists():
        return False
    return stamp.read_text().strip() == build_fingerprint(go_command())


def cluster_lock() -> contextlib.AbstractContextManager[None]:
    """The lock that serialises up/down of this cluster (one per state directory)."""
    cluster = str(REPO_ROOT) if STATE_DIR == REPO_ROOT / ".cluster" else str(STATE_DIR)  # same lock as before
    return exclusive_lock(f"cluster-{hashlib.sha256(cluster.encode()).hexdigest()[:12]}")


def build(force: bool = False) -> Path:
    """Build the control plane into the cache unless a matching build is already there."""
    go = go_command()
    with exclusive_lock("controlplane-build"):
        if not force and is_built():
            print(f"control plane already built in {bin_dir()}")
            return bin_dir()
        started = time.monotonic()
        bin_dir().mkdir(parents=True, exist_ok=True)
        (toolchain_dir() / "stamp").unlink(missing_ok=True)
        env = dict(os.environ, GOFLAGS="-buildvcs=false")
        for module, targets in BUILD_TARGETS.items():
            ldflags = "-s -w"
            if module == "kubernetes":
                ldflags += " " + version_ldflags(module_version("kubernetes"))
            print(f"building {', '.join(targets)} ({UPSTREAM_MODULES[module]} {module_version(module)})")
            # One invocation per module: the packages share compiled dependencies.
            output = f"{bin_dir()}/" if len(targets) > 1 else str(bin_dir() / next(iter(targets)))
            cmd = [go, "build", "-p", GO_BUILD_PARALLELISM, "-trimpath", f"-ldflags={ldflags}", "-o", output]
            subprocess.run([*cmd, *targets.values()], cwd=MODULES_DIR / module, env=env, check=True)
        write_kwok_config(go, env)
        (toolchain_dir() / "stamp").write_text(build_fingerprint(go) + "\n")
        print(f"built the control plane into {bin_dir()} in {time.monotonic() - started:.0f}s")
        return bin_dir()


def write_kwok_config(go: str, env: dict[str, str]) -> None:
    """Write kwok's configuration: its own stage manifests plus parallelism for large fleets."""
    kwok_source = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", UPSTREAM_MODULES["kwok"]],
        cwd=MODULES_DIR / "kwok",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "nodePlayStageParallelism": 16,
            "podPlayStageParallelism": 16,
            "nodeLeaseParallelism": 16,
            "podsOnNodeSyncParallelism": 4,
        },
    }
    documents = [json.dumps(options, indent=2)]
    documents += [(Path(kwok_source) / name).read_text() for name in KWOK_STAGE_FILES]
    kwok_config_file().write_text("\n---\n".join(doc.strip() for doc in documents) + "\n")


# ------------------------------------------------------------------------------------------ certificates


def openssl(*args: str) -> None:
    """Run the openssl command quietly, raising with its output on failure."""
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def issue_certificate(name: str, subject: str, extensions: str) -> None:
    """Create <name>.key and <name>.crt in the PKI dir, signed by the cluster CA."""
    key, csr, crt = (PKI_DIR / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = PKI_DIR / f"{name}.ext"
    ext_file.write_text(extensions + "\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject)
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(PKI_DIR / "ca.crt"),
        "-CAkey",
        str(PKI_DIR / "ca.key"),
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-out",
        str(crt),
        "-extfile",
        str(ext_file),
    )
    csr.unlink()
    ext_file.unlink()


CLIENT_EXTENSIONS = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
CLIENT_EXTENSIONS += "extendedKeyUsage=clientAuth"

# Client identities: the subject's O is the Kubernetes group, CN the user.
CLIENT_IDENTITIES = {
    "admin": "/O=system:masters/CN=dspool-admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
    "kube-scheduler": "/CN=system:kube-scheduler",
    # kwok stands in for thousands of kubelets (node status, leases, pod status), like kwokctl's admin.
    "kwok": "/O=system:masters/CN=kwok-controller",
    # LWS's manager; in a cluster its chart gives it a ClusterRole, here it runs as admin like kwok.
    "lws-controller": "/O=system:masters/CN=lws-controller",
}


def generate_pki() -> None:
    """Create the CA, the API server's serving cert, client certs and the service-account key pair."""
    PKI_DIR.mkdir(parents=True, exist_ok=True)
    openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-sha256",
        "-days",
        "3650",
        "-keyout",
        str(PKI_DIR / "ca.key"),
        "-out",
        str(PKI_DIR / "ca.crt"),
        "-subj",
        "/CN=dspool-local-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    alt_names = ["IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}", "DNS:localhost", "DNS:kubernetes"]
    alt_names += ["DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    issue_certificate(
        "kube-apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(alt_names)}",
    )
    for name, subject in CLIENT_IDENTITIES.items():
        issue_certificate(name, subject, CLIENT_EXTENSIONS)
    issue_certificate(
        "lws-webhook",
        "/CN=lws-webhook",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost",
    )
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(PKI_DIR / "sa.key"))
    openssl("pkey", "-in", str(PKI_DIR / "sa.key"), "-pubout", "-out", str(PKI_DIR / "sa.pub"))
    for key in PKI_DIR.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, server: str, identity: str) -> None:
    """Write a kubeconfig for one client identity with the certificates embedded."""

    def encoded(name: str) -> str:
        return base64.b64encode((PKI_DIR / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "dspool-local", "cluster": {"server": server, "certificate-authority-data": encoded("ca.crt")}}
        ],
        "users": [
            {
                "name": identity,
                "user": {
                    "client-certificate-data": encoded(f"{identity}.crt"),
                    "client-key-data": encoded(f"{identity}.key"),
                },
            }
        ],
        "contexts": [{"name": "dspool-local", "context": {"cluster": "dspool-local", "user": identity}}],
        "current-context": "dspool-local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid YAML; kubectl reads it
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_file(component: str) -> Path:
    """Return the pid file of one component."""
    return PID_DIR / f"{component}.pid"


def log_file(component: str) -> Path:
    """Return the log file of one component."""
    return LOG_DIR / f"{component}.log"


def read_pid(component: str) -> int | None:
    """Return the recorded pid of a component, or None when there is none."""
    try:
        return int(pid_file(component).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_our_process(pid: int, component: str) -> bool:
    """Tell whether pid is alive and still runs the component's binary (pids get reused)."""
    try:
        executable = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z" and Path(executable).name == component


def log_tail(component: str, lines: int = 15) -> str:
    """Return the last lines of a component's log, indented for an error message."""
    try:
        tail = log_file(component).read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return "    (no log written)"
    return "\n".join("    " + line for line in tail)


def crashed_error(component: str) -> ClusterError:
    """Build the error for a component that is not running, naming its log file."""
    return ClusterError(
        f"{component} is not running; see its log {log_file(component)}\n"
        f"last lines:\n{log_tail(component)}\n"
        f"(`python e2e/cluster.py down` clears the state, then `up` starts afresh)"
    )


def component_binary(component: str) -> Path:
    """Where a component's binary is: the control plane's bin dir, or the LWS tool's."""
    if component == "lws-controller":
        return tools.binary("lws-controller")
    return bin_dir() / component


def start(component: str, args: list[str]) -> int:
    """Start a component in its own process group with output to its log; record its pid."""
    binary = component_binary(component)
    with open(log_file(component), "ab") as log:
        process = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=STATE_DIR,
            start_new_session=True,
        )
    pid_file(component).write_text(f"{process.pid}\n")
    return process.pid


def wait_until(check: Callable[[], bool], component: str, what: str, timeout: float) -> None:
    """Poll check() until it holds; fail early naming the log if the component dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_pid(component)
        if pid is None or not is_our_process(pid, component):
            raise crashed_error(component)
        if check():
            return
        time.sleep(0.2)
    raise ClusterError(
        f"timed out after {timeout:.0f}s waiting for {what}; see {log_file(component)}\n{log_tail(component)}"
    )


def https_context(client_identity: str | None) -> ssl.SSLContext:
    """Return a TLS context trusting the cluster CA, optionally presenting a client certificate."""
    context = ssl.create_default_context(cafile=str(PKI_DIR / "ca.crt"))
    if client_identity:
        context.load_cert_chain(str(PKI_DIR / f"{client_identity}.crt"), str(PKI_DIR / f"{client_identity}.key"))
    return context


def insecure_context() -> ssl.SSLContext:
    """Return a TLS context for the self-signed health endpoints of the controllers."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Tell whether GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def api_get(state: dict[str, int], path: str) -> dict[str, object] | None:
    """GET an API path as admin; None on any error."""
    url = f"https://127.0.0.1:{state['kube-apiserver']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=https_context("admin")) as response:
            return dict(json.load(response))
    except (urllib.error.URLError, OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ up


@dataclass
class Ports:
    """The loopback ports one cluster listens on."""

    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    lws_webhook: int
    lws_health: int

    @classmethod
    def allocate(cls) -> Ports:
        """Pick distinct free ports."""
        chosen: set[int] = set()
        while len(chosen) < 8:
            chosen.add(free_port())
        return cls(*sorted(chosen))


def component_args(ports: Ports) -> dict[str, list[str]]:
    """Return the command-line arguments of every component."""
    pki = PKI_DIR
    etcd_url = f"http://127.0.0.1:{ports.etcd}"
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    return {
        "etcd": [
            "--name=dspool",
            f"--data-dir={STATE_DIR / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=dspool={peer_url}",
            "--unsafe-no-fsync",  # throw-away state: durability costs speed and buys nothing here
            "--log-level=warn",
        ],
        "kube-apiserver": [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'kube-apiserver.crt'}",
            f"--tls-private-key-file={pki / 'kube-apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            "--profiling=false",
            "--max-requests-inflight=800",
            "--max-mutating-requests-inflight=400",
            # The loopback address cannot back the `kubernetes` Service endpoints; nothing in-cluster needs them.
            "--endpoint-reconciler-type=none",
        ],
        "kube-controller-manager": [
            f"--kubeconfig={STATE_DIR / 'kube-controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={STATE_DIR / 'kube-controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={STATE_DIR / 'kube-controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--cert-dir={STATE_DIR / 'kube-controller-manager-certs'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--leader-elect=false",
            f"--kube-api-qps={CONTROLLER_QPS}",
            f"--kube-api-burst={CONTROLLER_BURST}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            f"--config={STATE_DIR / 'kube-scheduler.yaml'}",
            f"--authentication-kubeconfig={STATE_DIR / 'kube-scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={STATE_DIR / 'kube-scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            f"--cert-dir={STATE_DIR / 'kube-scheduler-certs'}",
        ],
        "kwok": [
            f"--config={kwok_config_file()}",
            f"--config={STATE_DIR / 'kwok-stages.yaml'}",
            f"--kubeconfig={STATE_DIR / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
            "--node-ip=127.0.0.1",
            f"--cidr={KWOK_POD_CIDR}",
            f"--node-lease-duration-seconds={KWOK_NODE_LEASE_SECONDS}",
            f"--server-address=127.0.0.1:{ports.kwok}",
        ],
        "lws-controller": [
            f"--config={STATE_DIR / 'lws-config.yaml'}",
            f"--kubeconfig={STATE_DIR / 'lws-controller.kubeconfig'}",
            "--zap-devel=false",
        ],
    }


def write_lws_config(ports: Ports) -> None:
    """LWS's configuration: webhooks on loopback with our certificate, no leader election, no metrics."""
    cert_dir = STATE_DIR / "lws-certs"
    cert_dir.mkdir(exist_ok=True)
    shutil.copy(PKI_DIR / "lws-webhook.crt", cert_dir / "tls.crt")
    shutil.copy(PKI_DIR / "lws-webhook.key", cert_dir / "tls.key")
    config = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": ports.lws_webhook, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports.lws_health}"},
        "clientConnection": {"qps": CONTROLLER_QPS, "burst": CONTROLLER_BURST},
    }
    (STATE_DIR / "lws-config.yaml").write_text(json.dumps(config, indent=2) + "\n")


def write_kwok_stages() -> None:
    """Stages of our own, beside kwok's (``KWOK_POD_READY_AGAIN_STAGE``)."""
    (STATE_DIR / "kwok-stages.yaml").write_text(KWOK_POD_READY_AGAIN_STAGE)


def lws_webhook_configurations(port: int) -> list[dict[str, Any]]:
    """LWS's mutating and validating webhooks (config/webhook of its module), served on loopback."""
    ca_bundle = base64.b64encode((PKI_DIR / "ca.crt").read_bytes()).decode()
    pods_only = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}

    def hook(name: str, path: str, group: str, resource: str, operations: list[str]) -> dict[str, Any]:
        webhook: dict[str, Any] = {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "operations": operations,
                       "resources": [resource]}],
        }  # fmt: skip
        if resource == "pods":
            webhook["objectSelector"] = pods_only
        return webhook

    lws = ("leaderworkerset.x-k8s.io", "leaderworkersets", ["CREATE", "UPDATE"])
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": LWS_WEBHOOKS},
            "webhooks": [
                hook("mleaderworkerset.kb.io", "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset", *lws),
                hook("mpod.kb.io", "/mutate--v1-pod", "", "pods", ["CREATE"]),
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": LWS_WEBHOOKS},
            "webhooks": [
                hook("vleaderworkerset.kb.io", "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset", *lws),
                hook("vpod.kb.io", "/validate--v1-pod", "", "pods", ["CREATE", "UPDATE"]),
            ],
        },
    ]


def kubectl(*args: str, stdin: str | None = None) -> str:
    """Run the built kubectl as admin; raise with its output on failure."""
    done = subprocess.run(
        [str(bin_dir() / "kubectl"), f"--kubeconfig={ADMIN_KUBECONFIG}", *args],
        input=stdin, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed:\n{done.stderr.strip()[:2000]}")
    return done.stdout


def install_lws(port: int) -> None:
    """Install the LWS CRD (from its pinned module) and its webhooks, and wait until the CRD is served."""
    crd = tools.source_dir("lws") / LWS_CRD_PATH
    deadline = time.monotonic() + 120
    # A CRD still being deleted (its LeaderWorkerSets go first) cannot be applied: wait until it is gone.
    while kubectl("get", "crd", LWS_CRD_NAME, "--ignore-not-found", "-o", "jsonpath={.metadata.deletionTimestamp}"):
        if time.monotonic() > deadline:
            raise ClusterError(f"the CRD {LWS_CRD_NAME} is still being deleted after 120 s")
        time.sleep(0.5)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    manifest = "\n---\n".join(json.dumps(obj) for obj in lws_webhook_configurations(port))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)

    # not `kubectl wait` (nor a jsonpath filter): both fail at once while the CRD has no conditions yet
    def established() -> bool:
        conditions = json.loads(kubectl("get", "crd", LWS_CRD_NAME, "-o", "json")).get("status", {}).get("conditions")
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions or [])

    while not established():
        if time.monotonic() > deadline:
            raise ClusterError(f"the CRD {LWS_CRD_NAME} is not Established after 120 s")
        time.sleep(0.5)
    # LWS's webhook server starts only once its controller has seen the CRD (controller-runtime looks again
    # 10 s after a kind it cannot find): until it listens, every LeaderWorkerSet write fails closed.
    wait_until(lambda: listening(port), "lws-controller", f"LWS's webhook server on port {port}", 90)


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def remove_lws() -> None:
    """Delete the LWS CRD (and with it every LeaderWorkerSet); the controller and webhooks stay."""
    kubectl("delete", "crd", LWS_CRD_NAME, "--ignore-not-found", "--wait=true", "--timeout=120s")


def write_scheduler_config() -> None:
    """Write kube-scheduler's configuration (client rate and leader election live only there)."""
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {
            "kubeconfig": str(STATE_DIR / "kube-scheduler.kubeconfig"),
            "qps": CONTROLLER_QPS,
            "burst": CONTROLLER_BURST,
        },
        "leaderElection": {"leaderElect": False},
    }
    (STATE_DIR / "kube-scheduler.yaml").write_text(json.dumps(config, indent=2) + "\n")


def read_state() -> dict[str, int] | None:
    """Return the recorded ports of the running cluster, or None."""
    try:
        return dict(json.loads(STATE_FILE.read_text())["ports"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def dead_components() -> list[str]:
    """Return the components whose recorded process is not running."""
    return [c for c in COMPONENTS if (pid := read_pid(c)) is None or not is_our_process(pid, c)]


def is_healthy(state: dict[str, int]) -> bool:
    """Tell whether every component runs and the API server reports ready."""
    if dead_components():
        return False
    return http_ok(f"https://127.0.0.1:{state['kube-apiserver']}/readyz", https_context("admin"))


def print_environment() -> None:
    """Print the lines that point a shell at the cluster."""
    print(f"kubectl: {bin_dir() / 'kubectl'}")
    print(f"export PATH={bin_dir()}:$PATH")
    print(f"export KUBECONFIG={ADMIN_KUBECONFIG}")


def up() -> None:
    """Start the cluster, or return at once when a healthy one is already running."""
    state = read_state()
    if state is not None:
        if is_healthy(state):
            print(f"cluster already up (API server https://127.0.0.1:{state['kube-apiserver']})")
            print_environment()
            return
        dead = dead_components()
        if dead:
            raise crashed_error(dead[0])
        raise ClusterError(
            f"the cluster in {STATE_DIR} runs but its API server is not ready; "
            f"see {log_file('kube-apiserver')}, or `python e2e/cluster.py down` and `up` again"
        )
    if STATE_DIR.exists():
        if any(pid_file(component).exists() for component in COMPONENTS):
            raise ClusterError(f"{STATE_DIR} has pid files but no cluster state; run `python e2e/cluster.py down`")
        shutil.rmtree(STATE_DIR)  # what a failed startup left behind (it reported its logs then)

    build()
    tools.build("lws")
    started = time.monotonic()
    for directory in (STATE_DIR, LOG_DIR, PID_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    try:
        start_all()
    except BaseException:
        stop_all()
        STATE_FILE.unlink(missing_ok=True)
        print(f"startup failed; logs kept in {LOG_DIR} until the next `up`", file=sys.stderr)
        raise
    print(f"cluster up in {time.monotonic() - started:.1f}s; state in {STATE_DIR}, logs in {LOG_DIR}")
    print_environment()


def start_all() -> None:
    """Generate credentials, then start and wait for each component in order."""
    ports = Ports.allocate()
    generate_pki()
    api = f"https://127.0.0.1:{ports.apiserver}"
    write_kubeconfig(ADMIN_KUBECONFIG, api, "admin")
    for identity in ("kube-controller-manager", "kube-scheduler", "kwok", "lws-controller"):
        write_kubeconfig(STATE_DIR / f"{identity}.kubeconfig", api, identity)
    write_scheduler_config()
    write_lws_config(ports)
    write_kwok_stages()
    state = {
        "etcd": ports.etcd,
        "kube-apiserver": ports.apiserver,
        "kube-controller-manager": ports.controller_manager,
        "kube-scheduler": ports.scheduler,
        "kwok": ports.kwok,
        "lws-controller": ports.lws_webhook,
    }
    all_ports = dataclasses.asdict(ports)  # every port, so that `restart` can rebuild any component's arguments
    STATE_FILE.write_text(json.dumps({"ports": state, "allPorts": all_ports, "bin": str(bin_dir())}, indent=2) + "\n")
    args = component_args(ports)

    start("etcd", args["etcd"])
    wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.etcd}/health"), "etcd", "etcd /health", 60)
    start("kube-apiserver", args["kube-apiserver"])
    admin_tls = https_context("admin")
    wait_until(lambda: http_ok(f"{api}/readyz", admin_tls), "kube-apiserver", "kube-apiserver /readyz", 120)
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        start(component, args[component])
    for component in ("kube-controller-manager", "kube-scheduler"):
        port = state[component]
        healthz = f"https://127.0.0.1:{port}/healthz"
        wait_until(lambda url=healthz: http_ok(url, insecure_context()), component, f"{component} /healthz", 90)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.kwok}/healthz"), "kwok", "kwok /healthz", 60)
    wait_until(
        lambda: api_get(state, "/api/v1/namespaces/default/serviceaccounts/default") is not None,
        "kube-controller-manager",
        "the `default` service account in namespace `default`",
        90,
    )
    start("lws-controller", args["lws-controller"])
    healthz = f"http://127.0.0.1:{ports.lws_health}/healthz"
    wait_until(lambda: http_ok(healthz), "lws-controller", "the LWS controller's /healthz", 60)
    install_lws(ports.lws_webhook)


# ---------------------------------------------------------------------------------------------- down


def stop(component: str, grace: float = 10.0) -> None:
    """Stop one component's process group: SIGTERM, then SIGKILL after the grace period."""
    pid = read_pid(component)
    if pid is None:
        return
    if is_our_process(pid, component):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while is_our_process(pid, component) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while is_our_process(pid, component):
            time.sleep(0.05)
    pid_file(component).unlink(missing_ok=True)


def stop_all() -> None:
    """Stop every recorded component, the last-started first."""
    for component in reversed(COMPONENTS):
        stop(component)


def down() -> None:
    """Stop exactly the processes `up` started and remove .cluster/."""
    if not STATE_DIR.exists():
        print("no cluster state; nothing to stop")
        return
    stop_all()
    shutil.rmtree(STATE_DIR)
    print(f"cluster stopped; removed {STATE_DIR}")


def status() -> int:
    """Print each component's state; return 0 when the cluster is healthy."""
    state = read_state()
    if state is None:
        print(f"no cluster ({STATE_DIR} has no state)")
        return 1
    for component in COMPONENTS:
        pid = read_pid(component)
        alive = pid is not None and is_our_process(pid, component)
        port = state.get(component, "")
        print(f"{component:24} pid {pid or '-':>7}  port {port:>5}  {'running' if alive else 'NOT RUNNING'}")
        if not alive:
            print(f"{'':24} log: {log_file(component)}")
    api_ready = http_ok(f"https://127.0.0.1:{state['kube-apiserver']}/readyz", https_context("admin"))
    print(f"API server https://127.0.0.1:{state['kube-apiserver']} {'ready' if api_ready else 'NOT READY'}")
    print_environment()
    return 0 if api_ready and not dead_components() else 1


# ------------------------------------------------------------------------------------------- restart

RESTARTABLE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def recorded_ports() -> Ports:
    """The ports of the running cluster, as `up` recorded them (older state files lack the etcd peer and
    LWS health ports: those components cannot be restarted then, and their fields are 0)."""
    try:
        document = json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError) as error:
        raise ClusterError(f"no cluster state in {STATE_FILE}; run `python e2e/cluster.py up` first") from error
    if "allPorts" in document:
        return Ports(**document["allPorts"])
    ports = document["ports"]
    return Ports(
        etcd=ports["etcd"],
        etcd_peer=0,
        apiserver=ports["kube-apiserver"],
        controller_manager=ports["kube-controller-manager"],
        scheduler=ports["kube-scheduler"],
        kwok=ports["kwok"],
        lws_webhook=ports["lws-controller"],
        lws_health=0,
    )


def wait_for_free_port(port: int, timeout: float) -> None:
    """Block until 127.0.0.1:port can be bound (as a Go listener binds it: SO_REUSEADDR)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"port {port} still in use {timeout:.0f}s after stopping its process") from None
        time.sleep(0.1)


def restart(component: str, hard: bool = False) -> float:
    """Stop one component (SIGTERM with the usual grace, or SIGKILL at once when ``hard``) and start it again
    with the same arguments and port; return when it is healthy again, with the seconds it was away."""
    if component not in RESTARTABLE:
        raise ClusterError(f"cannot restart {component}; restartable: {', '.join(RESTARTABLE)}")
    ports = recorded_ports()
    state = read_state()
    assert state is not None  # recorded_ports() read the same file
    started = time.monotonic()
    stop(component, grace=0.0 if hard else 10.0)
    # /proc/<pid>/exe goes before the dying process has closed its files: wait until its port is free again.
    port = ports.apiserver if component == "kube-apiserver" else state[component]
    wait_for_free_port(port, 30)
    start(component, component_args(ports)[component])
    if component == "kube-apiserver":
        api = f"https://127.0.0.1:{ports.apiserver}"
        admin_tls = https_context("admin")
        wait_until(lambda: http_ok(f"{api}/readyz", admin_tls), component, "kube-apiserver /readyz", 120)
    elif component == "kwok":
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.kwok}/healthz"), component, "kwok /healthz", 60)
    else:
        port = state[component]
        healthz = f"https://127.0.0.1:{port}/healthz"
        wait_until(lambda: http_ok(healthz, insecure_context()), component, f"{component} /healthz", 90)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "up", "down", "status", "lws", "restart"])
    parser.add_argument(
        "action", nargs="?", choices=["install", "remove", *RESTARTABLE],
        help="lws: install or remove its CRD; restart: the component",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="build: rebuild even when the cache is warm")
    parser.add_argument("--hard", action="store_true", help="restart: SIGKILL instead of SIGTERM")
    options = parser.parse_args(argv)
    try:
        if options.command == "build":
            build(force=options.force)
            tools.build("lws")
        elif options.command == "up":
            with cluster_lock():
                up()
        elif options.command == "down":
            with cluster_lock():
                down()
        elif options.command == "restart":
            if options.action not in RESTARTABLE:
                raise ClusterError(f"restart needs a component: {', '.join(RESTARTABLE)}")
            with cluster_lock():
                away = restart(options.action, hard=options.hard)
            print(f"{options.action} restarted; healthy again after {away:.1f}s")
        elif options.command == "lws":
            state = read_state()
            if state is None:
                raise ClusterError("no cluster; run `python e2e/cluster.py up` first")
            if options.action not in ("install", "remove"):
                raise ClusterError("lws needs install or remove")
            if options.action == "remove":
                remove_lws()
            else:
                install_lws(state["lws-controller"])
        else:
            return status()
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"error: {' '.join(map(str, error.cmd))} exited with {error.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
