"""Randomized fault runs against dspool on the local control plane (shared by bench/faults.py and the tests).

One *run* is: a fresh namespace and a small fake pool (kwok nodes, a unique ``dspool.io/pool`` label), one
``dspool run`` limited to both, a foreign pod holding two devices of one node, then a seeded random
sequence of steps with short random pauses between them:

- **operations**: bursts of DeepSeekDeployment creates (distills, sometimes a multi-node R1), scales
  through the scale subresource (``kubectl scale``), deletes, and node losses (the Node object deleted);
- **faults**: ``operator-kill`` (kill -9 of a running operator at that moment, restarted after a pause),
  ``apiserver-restart`` (kube-apiserver stopped and started again on the same port; nobody touches the
  operator, it must recover by itself), ``lease-race`` (a second operator on the same Lease: both run for
  a few steps, then one of the two, chosen at random, is killed with -9).

A watch on the run's DSDs records every stored version meanwhile (re-listing after a broken watch, e.g.
while kube-apiserver is away). After the steps the run waits for the DSDs to settle and checks:

- ``oversubscribed``: on every node, dspool's bookings (every DSD's ``status.placements``) plus the
  device requests of pods dspool does not own fit the node's allocatable, at every recorded revision and
  at the end; and at the end the device requests of all pods bound to the node fit as well;
- ``unexplained``: every DSD is placed (``Ready``/``Progressing`` with as many placements as replicas) or
  explained (``Unschedulable``/``Degraded``/``Failed`` with a False condition carrying a reason and a
  message);
- ``orphaned``: every Deployment, StatefulSet, ConfigMap, Service and LeaderWorkerSet labelled
  ``dspool.io/deployment`` belongs to an existing DSD (label and owner uid) and, for per-replica objects,
  to one of its current placements;
- ``status-lost``: between two recorded versions of a DSD, a placement disappears only when the DSD was
  scaled below it (judged at the status's ``observedGeneration``) or one of its nodes was lost;
- ``not-converged``: the DSDs did not settle within the time limit;
- ``operator-died``: an operator process the run did not kill exited.

The step sequence is a pure function of the seed (:func:`plan_run`), so a run can be repeated; the
timing of the faults against the operator's passes is not, which is the point of running many.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from dspool import api
from dspool.sim.apply import apply_pool, delete_pool
from dspool.sim.fleet import POOL_LABEL, NodeGroup, PoolFile, node_manifests

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO_ROOT / "e2e" / "cluster.py"
LOCAL_KUBECONFIG = REPO_ROOT / ".cluster" / "kubeconfig"

FAULTS = ("operator-kill", "apiserver-restart", "lease-race", "node-loss")
OPERATIONS = ("create", "scale", "delete")
INVARIANTS = ("oversubscribed", "unexplained", "orphaned", "status-lost", "not-converged", "operator-died")
SETTLED_PHASES = {"Ready", "Unschedulable", "Degraded", "Failed"}
PLACED_PHASES = {"Ready", "Progressing"}
EXPLAINED_PHASES = {"Unschedulable", "Degraded", "Failed"}

# The pool of every run: one fabric of four H100 servers (room for two multi-node R1 gangs), two L20 and
# two RTX 4090 servers for the distills.
POOL_GROUPS = (
    NodeGroup(name="h100", count=4, accelerator="H100-80G", labels={"dspool.io/fabric": "ib-1"}),
    NodeGroup(name="l20", count=2, accelerator="L20-48G", labels={"dspool.io/fabric": "eth-1"}),
    NodeGroup(name="rtx", count=2, accelerator="RTX4090-24G", labels={"dspool.io/fabric": "eth-2"}),
)
DISTILLS = (
    "deepseek-r1-distill-qwen-1.5b",
    "deepseek-r1-distill-qwen-7b",
    "deepseek-r1-distill-llama-8b",
    "deepseek-r1-distill-qwen-14b",
    "deepseek-r1-distill-qwen-32b",
    "deepseek-r1-distill-llama-70b",
)
R1_SPEC: dict[str, Any] = {"model": "deepseek-r1", "placement": {"acceleratorTypes": ["H100-80G"]}}
R1_SHARE = 0.12  # of created DSDs
FOREIGN_POD_DEVICES = 2  # a pod dspool does not own, on the first L20 server
FOREIGN_IMAGE = os.environ.get("DSPOOL_TEST_IMAGE", "pause:3.10")  # fake nodes never pull it
MAX_NODE_LOSSES = 2
MAX_APISERVER_RESTARTS = 2
WORKLOAD_KINDS = (  # (group, version, plural) of what dspool creates for a DSD
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
)


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Step:
    """One thing a run does: an operation or a fault, then a pause."""

    action: str  # one of OPERATIONS or FAULTS, or "race-kill" (the end of a lease race)
    pause_seconds: float
    count: int = 1  # create: DSDs in the burst
    replicas: int = 1  # scale: the new replica count
    pick: float = 0.0  # which DSD / node / operator, as a fraction of those there are at that moment
    hard: bool = False  # apiserver-restart: SIGKILL instead of SIGTERM
    down_seconds: float = 0.0  # operator-kill: how long the operator stays dead
    specs: tuple[tuple[str, int], ...] = ()  # create: (model, replicas) per DSD


def plan_run(seed: int, steps: int | None = None, required: Sequence[str] = ()) -> list[Step]:
    """The seeded step sequence of one run; every fault in ``required`` occurs at least once."""
    rng = random.Random(seed)
    total = steps if steps is not None else rng.randint(7, 12)
    weights = {"create": 3.0, "scale": 2.0, "delete": 1.0, "node-loss": 0.8, "operator-kill": 1.4,
               "apiserver-restart": 0.7, "lease-race": 0.8}  # fmt: skip
    actions = [rng.choices(list(weights), weights=list(weights.values()))[0] for _ in range(total)]
    actions[0] = "create"  # something to act on
    for fault in required:
        if fault not in actions:
            actions[rng.randrange(1, total)] = fault
    capped = {"node-loss": MAX_NODE_LOSSES, "apiserver-restart": MAX_APISERVER_RESTARTS, "lease-race": 1}
    seen: Counter[str] = Counter()
    plan: list[Step] = []
    race_ends_at: int | None = None
    for index, action in enumerate(actions):
        seen[action] += 1
        if action in capped and seen[action] > capped[action]:
            action = "create"
        if race_ends_at == index:
            plan.append(Step("race-kill", rng.uniform(0.2, 2.0), pick=rng.random()))
        plan.append(_step(rng, action))
        if action == "lease-race":
            race_ends_at = index + rng.randint(1, 3)
    if race_ends_at is not None and race_ends_at >= len(actions):
        plan.append(Step("race-kill", rng.uniform(0.2, 2.0), pick=rng.random()))
    return plan


def _step(rng: random.Random, action: str) -> Step:
    pause = rng.uniform(0.0, 2.5)
    if action == "create":
        count = rng.randint(1, 4)
        specs = tuple(
            ("deepseek-r1", 1) if rng.random() < R1_SHARE else (rng.choice(DISTILLS), rng.randint(1, 3))
            for _ in range(count)
        )
        return Step(action, pause, count=count, specs=specs)
    if action == "scale":
        return Step(action, pause, replicas=rng.choice([0, 1, 1, 2, 3, 4]), pick=rng.random())
    if action == "apiserver-restart":
        return Step(action, pause, hard=rng.random() < 0.5)
    if action == "operator-kill":
        return Step(action, pause, pick=rng.random(), down_seconds=rng.uniform(0.0, 3.0))
    return Step(action, pause, pick=rng.random())


# ----------------------------------------------------------------------------------------- processes


class OperatorProcess:
    """A ``dspool run`` subprocess for one namespace and pool, sharing a Lease with any sibling."""

    def __init__(
        self, kubeconfig: str, namespace: str, pool: str, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = [
            sys.executable, "-m", "dspool", "run", "--namespace", namespace,
            "--node-selector", f"{POOL_LABEL}={pool}", "--liveness-port", "0", "--metrics-port", "0",
            "--resync-seconds", "3", "--stuck-after-seconds", "30", "--node-grace-seconds", "5",
            "--lease-namespace", namespace, "--lease-name", f"dspool-{pool}",
        ]  # fmt: skip
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, **dict(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.killed = False  # by the run, on purpose: its exit is no violation

    def start(self) -> None:
        """Start (or restart) it; its output is appended to its log."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.killed = False

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.pid is not None

    def kill(self) -> None:
        """kill -9: a crash, at whatever point it is."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.killed = True

    def signal(self, signum: int) -> None:
        """Send a signal (SIGSTOP/SIGCONT to freeze and thaw it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM; SIGKILL after 20 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.killed = True

    def died_unexpectedly(self) -> bool:
        """Whether it exited without the run killing or stopping it."""
        return self.process is not None and self.process.poll() is not None and not self.killed

    def log_text(self) -> str:
        """Its whole log."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def restart_apiserver(hard: bool, kubeconfig: str) -> float:
    """Restart kube-apiserver of the local control plane whose kubeconfig this is (``e2e/cluster.py restart``
    in that kubeconfig's state directory: not `.cluster/` when the run is on another one); seconds it was away."""
    args = [sys.executable, str(CLUSTER_SCRIPT), "restart", "kube-apiserver", *(["--hard"] if hard else [])]
    env = {**os.environ, "DSPOOL_CLUSTER_DIR": str(Path(kubeconfig).resolve().parent)}
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"restarting kube-apiserver failed:\n{done.stdout}{done.stderr}")
    return time.monotonic() - started


def wait_api_ready(api_client: client.ApiClient, timeout: float = 120) -> None:
    """Block until the API server answers a cheap request."""
    version = client.VersionApi(api_client)
    deadline = time.monotonic() + timeout
    while True:
        try:
            version.get_code(_request_timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def retrying(call: Callable[[], Any], attempts: int = 40, what: str = "") -> Any:
    """Call, retrying through connection errors and 5xx/429 (kube-apiserver may be restarting)."""
    for attempt in range(attempts):
        try:
            return call()
        except ApiException as exc:
            if exc.status is not None and exc.status < 500 and exc.status != 429:
                raise
            error: Exception = exc
        except Exception as exc:  # connection refused or reset
            error = exc
        if attempt == attempts - 1:
            raise RuntimeError(f"{what or 'API call'} kept failing: {error}") from error
        time.sleep(0.5)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Observation:
    """One stored version of a DSD, as the watch (or a re-list) delivered it."""

    kind: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    generation: int
    replicas: int  # spec.replicas of this version
    status: Mapping[str, Any]
    at: float  # time.monotonic() when received


def observation_of(kind: str, body: Mapping[str, Any], at: float) -> Observation:
    """An Observation from a watch event's object."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return Observation(
        kind=kind,
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        generation=int(meta.get("generation") or 0),
        replicas=int(spec.get("replicas", 1)),
        status=dict(body.get("status") or {}),
        at=at,
    )


class StatusRecorder:
    """Watches the DSDs of one namespace on a thread and keeps every version it sees, in order."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.observations: list[Observation] = []
        self.reconnects = 0
        self._known: dict[str, Mapping[str, Any]] = {}  # name -> last body
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"record-{namespace}", daemon=True)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _emit(self, kind: str, body: Mapping[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name"))
        if kind == "DELETED":
            self._known.pop(name, None)
        else:
            previous = self._known.get(name)
            if previous is not None and _version(previous) == _version(body):
                return
            self._known[name] = body
        self.observations.append(observation_of(kind, body, time.monotonic()))

    def _relist(self) -> str:
        listed = self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, _request_timeout=10
        )
        present = {item["metadata"]["name"]: item for item in listed["items"]}
        for name in [n for n in self._known if n not in present]:
            self._emit("DELETED", self._known[name])
        for item in sorted(present.values(), key=_version):
            self._emit("MODIFIED" if item["metadata"]["name"] in self._known else "ADDED", item)
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, self.namespace, api.PLURAL,
                    resource_version=version, timeout_seconds=5, _request_timeout=15,
                )  # fmt: skip
                for event in stream:
                    body = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: the version is too old, list again
                        version = None
                        break
                    self._emit(event["type"], body)
                    version = str(body["metadata"]["resourceVersion"])
                    if self._stop.is_set():
                        break
            except Exception:  # kube-apiserver restarting: list again when it is back
                self.reconnects += 1
                version = None
                self._stop.wait(0.5)


def _version(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("resourceVersion") or 0)


# ---------------------------------------------------------------------------------------- invariants


@dataclass(frozen=True)
class Violation:
    """An invariant that did not hold, with what shows it."""

    invariant: str
    detail: str


def placement_key(placement: Mapping[str, Any]) -> tuple[int, tuple[tuple[str, int], ...]]:
    """A placement as (replica index, ((node, devices), ...))."""
    nodes = tuple(sorted((str(n["name"]), int(n["devices"])) for n in placement.get("nodes") or []))
    return int(placement.get("replica", -1)), nodes


def bookings_by_node(statuses: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Devices booked on each node by these DSD statuses (their placements)."""
    booked: Counter[str] = Counter()
    for status in statuses:
        for placement in status.get("placements") or []:
            for node in placement.get("nodes") or []:
                booked[str(node["name"])] += int(node["devices"])
    return booked


def check_bookings_over_time(
    observations: Sequence[Observation],
    capacity: Mapping[str, int],
    lost_at: Mapping[str, float],
) -> list[Violation]:
    """At every recorded revision, the bookings of all DSDs on each node fit ``capacity`` (allocatable minus
    foreign pods); a node lost at time t no longer counts from t on. One violation per node (the first)."""
    current: dict[str, Mapping[str, Any]] = {}
    violations: dict[str, Violation] = {}
    for observation in observations:
        if observation.kind == "DELETED":
            current.pop(observation.uid, None)
            continue
        current[observation.uid] = observation.status
        for node, booked in bookings_by_node(current.values()).items():
            if node in violations or node not in capacity:
                continue
            if node in lost_at and lost_at[node] <= observation.at:
                continue
            if booked > capacity[node]:
                holders = sorted(
                    f"{name}" for uid, status in current.items()
                    for name in [_name_of(observations, uid)]
                    if bookings_by_node([status]).get(node)
                )  # fmt: skip
                violations[node] = Violation(
                    "oversubscribed",
                    f"{node}: {booked} devices booked by {', '.join(holders)} at once (room for {capacity[node]}), "
                    f"after {observation.kind} of {observation.name}",
                )
    return list(violations.values())


def _name_of(observations: Sequence[Observation], uid: str) -> str:
    return next((o.name for o in observations if o.uid == uid), uid)


def check_status_never_lost(observations: Sequence[Observation], lost_at: Mapping[str, float]) -> list[Violation]:
    """Between consecutive recorded versions of a DSD, placements vanish only when the DSD was scaled below
    them (at the generation the new status was decided for) or one of their nodes was lost by then."""
    violations = []
    last: dict[str, Observation] = {}
    replicas_at: dict[str, dict[int, int]] = {}  # uid -> generation -> spec.replicas
    for observation in observations:
        replicas_at.setdefault(observation.uid, {})[observation.generation] = observation.replicas
        before = last.get(observation.uid)
        if observation.kind == "DELETED":
            last.pop(observation.uid, None)
            continue
        last[observation.uid] = observation
        if before is None:
            continue
        old = {placement_key(p) for p in before.status.get("placements") or []}
        new = {placement_key(p) for p in observation.status.get("placements") or []}
        vanished = old - new
        if not vanished:
            continue
        on_lost_nodes = {
            key for key in vanished if any(n in lost_at and lost_at[n] <= observation.at for n, _ in key[1])
        }
        decided_for = observation.status.get("observedGeneration")
        generations = replicas_at[observation.uid]
        desired = generations.get(decided_for, observation.replicas) if isinstance(decided_for, int) else None
        # Scaling down removes replicas; which ones is the operator's choice.
        allowed = max(0, len(old) - desired) if desired is not None else len(old)
        unexplained = len(vanished - on_lost_nodes) - allowed
        moves = observation.status.get("moves") or before.status.get("moves") or []
        if unexplained > 0 and not moves:
            shown = "; ".join(
                f"replica {r} on {', '.join(f'{n}:{d}' for n, d in nodes)}" for r, nodes in sorted(vanished)
            )
            violations.append(
                Violation(
                    "status-lost",
                    f"{observation.name}: {len(vanished)} placement(s) vanished ({shown}) with {len(new)} left, "
                    f"replicas {desired} at generation {decided_for}, no node of theirs lost",
                )
            )
    return violations


def check_explained(dsds: Sequence[Mapping[str, Any]]) -> list[Violation]:
    """Every DSD placed (Ready/Progressing with a placement per replica) or explained (a False condition with
    a reason and a message)."""
    violations = []
    for dsd in dsds:
        name = dsd["metadata"]["name"]
        status = dsd.get("status") or {}
        phase = status.get("phase")
        conditions = status.get("conditions") or []
        if phase in PLACED_PHASES:
            wanted = int((dsd.get("spec") or {}).get("replicas", 1))
            placed = len(status.get("placements") or [])
            if placed < wanted:
                violations.append(Violation("unexplained", f"{name}: {phase} with {placed} of {wanted} placed"))
        elif phase in EXPLAINED_PHASES:
            if not any(c.get("status") == "False" and c.get("reason") and c.get("message") for c in conditions):
                violations.append(Violation("unexplained", f"{name}: {phase} without a condition saying why"))
        else:
            violations.append(Violation("unexplained", f"{name}: phase {phase!r}"))
    return violations


def check_no_orphans(
    dsds: Sequence[Mapping[str, Any]], objects: Sequence[tuple[str, Mapping[str, Any]]]
) -> list[Violation]:
    """Every labelled workload belongs to an existing DSD (label and owner) and, when it is per replica, to
    one of the DSD's current placements. ``objects``: (kind, object) pairs not being deleted."""
    by_label = {api.deployment_label_value(d["metadata"]["name"]): d for d in dsds}
    violations = []
    for kind, obj in objects:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        owner_label = str(labels.get(api.DEPLOYMENT_LABEL))
        what = f"{kind} {meta.get('name')}"
        dsd = by_label.get(owner_label)
        if dsd is None:
            violations.append(Violation("orphaned", f"{what}: its DSD {owner_label} does not exist"))
            continue
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if dsd["metadata"]["uid"] not in owners:
            violations.append(Violation("orphaned", f"{what}: not owned by DSD {owner_label} (uid)"))
            continue
        replica = labels.get(api.REPLICA_LABEL)
        placed = {str(p.get("replica")) for p in (dsd.get("status") or {}).get("placements") or []}
        if replica is not None and replica not in placed:
            violations.append(
                Violation("orphaned", f"{what}: replica {replica} of {owner_label} has no placement ({sorted(placed)})")
            )
    return violations


def check_nodes_fit(
    dsds: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, tuple[str, int]],
    pods: Sequence[Mapping[str, Any]],
) -> list[Violation]:
    """At the end: per node, bookings + foreign pods' device requests <= allocatable, and all bound pods'
    device requests <= allocatable. ``nodes``: name -> (device resource, allocatable) of the nodes that exist."""
    booked = bookings_by_node(d.get("status") or {} for d in dsds)
    foreign: Counter[str] = Counter()
    bound: Counter[str] = Counter()
    for pod in pods:
        node = str((pod.get("spec") or {}).get("nodeName"))
        if node not in nodes or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        requested = pod_requests(pod, nodes[node][0])
        bound[node] += requested
        if api.DEPLOYMENT_LABEL not in ((pod.get("metadata") or {}).get("labels") or {}):
            foreign[node] += requested
    violations = []
    for node, (resource, allocatable) in sorted(nodes.items()):
        if booked[node] + foreign[node] > allocatable:
            violations.append(Violation("oversubscribed", f"{node}: {booked[node]} booked + {foreign[node]} "
                                                          f"foreign > {allocatable} {resource}"))  # fmt: skip
        if bound[node] > allocatable:
            violations.append(Violation("oversubscribed", f"{node}: pods bound ask {bound[node]} > {allocatable}"))
    return violations


def pod_requests(pod: Mapping[str, Any], resource: str) -> int:
    """A pod's request of one extended resource over its containers."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return sum(int(((c.get("resources") or {}).get("requests") or {}).get(resource, 0)) for c in containers)


# -------------------------------------------------------------------------------------------- a run


@dataclass
class RunResult:
    """What one run did and found."""

    index: int
    seed: int
    steps: list[Step]
    injected: Counter[str] = field(default_factory=Counter)  # action -> how often it happened
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: float = 0.0
    dsds: int = 0
    placements: int = 0
    watch_reconnects: int = 0
    versions: int = 0  # DSD versions the watch recorded (what the over-time checks looked at)
    harness_error: str | None = None  # the run itself broke (e.g. kube-apiserver did not come back): no verdict

    def violated(self) -> Counter[str]:
        """Violations by invariant."""
        return Counter(v.invariant for v in self.violations)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record of the run (bench/faults.py --results)."""
        return {
            "index": self.index, "seed": self.seed, "injected": dict(self.injected),
            "violations": [[v.invariant, v.detail] for v in self.violations], "seconds": round(self.seconds, 1),
            "settleSeconds": round(self.settle_seconds, 1), "dsds": self.dsds, "placements": self.placements,
            "versions": self.versions, "watchReconnects": self.watch_reconnects, "harnessError": self.harness_error,
        }  # fmt: skip

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunResult:
        """The inverse of :meth:`to_json` (the steps are planned again from the seed)."""
        return cls(
            index=record["index"], seed=record["seed"], steps=plan_run(record["seed"]),
            injected=Counter(record["injected"]), violations=[Violation(i, d) for i, d in record["violations"]],
            seconds=record["seconds"], settle_seconds=record["settleSeconds"], dsds=record["dsds"],
            placements=record["placements"], versions=record["versions"], watch_reconnects=record["watchReconnects"],
            harness_error=record.get("harnessError"),
        )  # fmt: skip


class FaultRun:
    """One randomized run against the local control plane."""

    def __init__(
        self, api_client: client.ApiClient, kubeconfig: str, index: int, seed: int, log_dir: Path,
        steps: int | None = None, required: Sequence[str] = (), settle_timeout: float = 180.0,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:  # fmt: skip
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.kubeconfig = kubeconfig
        self.result = RunResult(index, seed, plan_run(seed, steps, required))
        self.rng = random.Random(seed ^ 0x5EED)
        self.log_dir = log_dir
        self.settle_timeout = settle_timeout
        self.log = log
        suffix = uuid.uuid4().hex[:6]
        self.namespace = f"faults-{index}-{suffix}"
        self.pool = PoolFile(name=f"fp-{suffix}", name_prefix=f"fp-{suffix}-", groups=list(POOL_GROUPS))
        self.node_names = [n["metadata"]["name"] for n in node_manifests(self.pool)]
        self.allocatable: dict[str, tuple[str, int]] = {}  # node -> (resource, devices)
        self.lost_at: dict[str, float] = {}
        self.operators: list[OperatorProcess] = []
        self.created = 0

    # -- setup and teardown

    def setup(self) -> None:
        """Namespace, pool (Ready), the foreign pod (bound), one operator."""
        retrying(
            lambda: self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        )
        apply_pool(self.core, self.pool)
        for manifest in node_manifests(self.pool):
            allocatable = manifest["status"]["allocatable"]
            resource = next(k for k in allocatable if "/" in k)
            self.allocatable[manifest["metadata"]["name"]] = (resource, int(allocatable[resource]))
        self._wait(self._nodes_ready, 90, "the pool's nodes to be Ready")
        self._wait(lambda: self._service_account(), 60, "the namespace's default service account")
        foreign_node = next(n for n in self.node_names if "-l20-" in n)
        resource = self.allocatable[foreign_node][0]
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="foreign"),
            spec=client.V1PodSpec(
                node_selector={"kubernetes.io/hostname": foreign_node},
                tolerations=[client.V1Toleration(key=resource, operator="Exists")],
                containers=[client.V1Container(
                    name="main", image=FOREIGN_IMAGE,
                    resources=client.V1ResourceRequirements(requests={resource: str(FOREIGN_POD_DEVICES)},
                                                            limits={resource: str(FOREIGN_POD_DEVICES)}),
                )],
            ),
        )  # fmt: skip
        self.core.create_namespaced_pod(self.namespace, pod)
        self._wait(
            lambda: self.core.read_namespaced_pod("foreign", self.namespace).spec.node_name, 60, "the foreign pod bound"
        )
        self._start_operator()

    def _service_account(self) -> bool:
        self.core.read_namespaced_service_account("default", self.namespace)
        return True

    def _nodes_ready(self) -> bool:
        nodes = self.core.list_node(label_selector=f"{POOL_LABEL}={self.pool.name}").items
        ready = [n for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])]
        return len(ready) == len(self.node_names)

    def _start_operator(self) -> OperatorProcess:
        operator = OperatorProcess(
            self.kubeconfig,
            self.namespace,
            self.pool.name,
            self.log_dir / f"{self.namespace}-op{len(self.operators)}.log",
        )
        operator.start()
        self.operators.append(operator)
        return operator

    def teardown(self) -> None:
        """Stop the operators, delete the pool's nodes and the namespace (without waiting for it)."""
        for operator in self.operators:
            operator.stop()
        with contextlib.suppress(Exception):
            retrying(lambda: delete_pool(self.core, self.pool), what="deleting the pool")
        with contextlib.suppress(Exception):
            retrying(lambda: self.core.delete_namespace(self.namespace), what="deleting the namespace")

    # -- steps

    def run(self) -> RunResult:
        """Set up, play the steps, settle, check, tear down."""
        started = time.monotonic()
        try:
            self.setup()
            self._play()
        except Exception as exc:  # the harness broke, not (as far as we know) the operator
            self.result.harness_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            self.teardown()
            self.result.seconds = time.monotonic() - started
        return self.result

    def _play(self) -> None:
        """The steps under a recording watch, then settle and check."""
        with StatusRecorder(self.api_client, self.namespace) as recorder:
            for step in self.result.steps:
                self.log(f"  run {self.result.index}: {step.action}")
                self._do(step)
                self.result.injected[step.action] += 1
                time.sleep(step.pause_seconds)
            if sum(1 for o in self.operators if o.alive()) > 1:  # a race still on: kill one, as planned
                self._do(Step("race-kill", 0.0, pick=self.rng.random()))
            settle_started = time.monotonic()
            settled = self._settle()
            self.result.settle_seconds = time.monotonic() - settle_started
            if not settled:  # every thread's stack into the operators' logs: what were they waiting for?
                for operator in self.operators:
                    operator.signal(signal.SIGUSR1)
                time.sleep(1)
        self.result.watch_reconnects = recorder.reconnects
        self.result.versions = len(recorder.observations)
        self._check(recorder.observations, settled)

    def _do(self, step: Step) -> None:
        if step.action == "create":
            for model, replicas in step.specs:
                spec = dict(R1_SPEC) if model == "deepseek-r1" else {"model": model, "replicas": replicas}
                body = {"apiVersion": api.API_VERSION, "kind": api.KIND,
                        "metadata": {"name": f"d{self.created:02d}"}, "spec": spec}  # fmt: skip
                self.created += 1
                self._create(body)
        elif step.action in ("scale", "delete"):
            names = self._dsd_names()
            if not names:
                return
            name = names[int(step.pick * len(names))]
            if step.action == "scale":
                retrying(lambda: self.custom.patch_namespaced_custom_object_scale(
                    api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": {"replicas": step.replicas}}
                ), what="scale")  # fmt: skip
            else:
                with contextlib.suppress(ApiException):
                    retrying(lambda: self.custom.delete_namespaced_custom_object(
                        api.GROUP, api.VERSION, self.namespace, api.PLURAL, name), what="delete")  # fmt: skip
        elif step.action == "node-loss":
            remaining = [n for n in self.node_names if n not in self.lost_at]
            node = remaining[int(step.pick * len(remaining))]
            self.lost_at[node] = time.monotonic()  # from now on its bookings are the operator's to drop
            retrying(lambda: self.core.delete_node(node), what="delete node")
        elif step.action == "operator-kill":
            running = [o for o in self.operators if o.alive()]
            if not running:
                return
            victim = running[int(step.pick * len(running))]
            victim.kill()
            time.sleep(step.down_seconds)
            victim.start()
        elif step.action == "apiserver-restart":
            restart_apiserver(step.hard, self.kubeconfig)
            wait_api_ready(self.api_client)
        elif step.action == "lease-race":
            self._start_operator()
        elif step.action == "race-kill":
            running = [o for o in self.operators if o.alive()]
            if len(running) > 1:
                running[int(step.pick * len(running))].kill()
        else:
            raise ValueError(f"unknown step {step.action}")

    def _create(self, body: dict[str, Any]) -> None:
        try:
            retrying(lambda: self.custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.PLURAL, body), what="create")  # fmt: skip
        except ApiException as exc:
            if exc.status != 409:  # created before a connection broke, then retried
                raise

    def _dsd_names(self) -> list[str]:
        listed = retrying(lambda: self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL), what="list DSDs")  # fmt: skip
        return sorted(item["metadata"]["name"] for item in listed["items"])

    # -- settle and check

    def _snapshot(self) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        dsds = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL)["items"]
        return dsds, self._workloads()

    def _workloads(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for group, version, plural in WORKLOAD_KINDS:
            try:
                if group:
                    items = self.custom.list_namespaced_custom_object(
                        group, version, self.namespace, plural, label_selector=api.DEPLOYMENT_LABEL
                    )["items"]
                else:
                    lister = (
                        self.core.list_namespaced_config_map
                        if plural == "configmaps"
                        else self.core.list_namespaced_service
                    )
                    items = self.api_client.sanitize_for_serialization(
                        lister(self.namespace, label_selector=api.DEPLOYMENT_LABEL).items
                    )
            except ApiException as exc:
                if exc.status == 404:  # e.g. LeaderWorkerSet not installed
                    continue
                raise
            found += [(plural, item) for item in items if not (item.get("metadata") or {}).get("deletionTimestamp")]
        return found

    def _settle(self) -> bool:
        """Wait until every DSD has a status for its generation in a settled phase, no workload is orphaned, a
        running operator holds the Lease, and nothing changed over three polls in a row."""
        deadline = time.monotonic() + self.settle_timeout
        last: object = None
        stable = 0
        while time.monotonic() < deadline:
            time.sleep(2)
            try:
                dsds, objects = self._snapshot()
                settled = (
                    all(
                        (d.get("status") or {}).get("phase") in SETTLED_PHASES
                        and (d.get("status") or {}).get("observedGeneration") == d["metadata"].get("generation")
                        for d in dsds
                    )
                    and not check_no_orphans(dsds, objects)
                    and self._led_by_a_live_operator()
                )
            except Exception:  # e.g. no Lease yet, or the API server briefly away
                stable = 0
                continue
            fingerprint = sorted((d["metadata"]["name"], d["metadata"]["resourceVersion"]) for d in dsds)
            stable = stable + 1 if settled and fingerprint == last else 0
            last = fingerprint
            if stable >= 2:
                return True
        return False

    def _led_by_a_live_operator(self) -> bool:
        coordination = client.CoordinationV1Api(self.api_client)
        lease = coordination.read_namespaced_lease(f"dspool-{self.pool.name}", self.namespace)
        holder = (lease.spec.holder_identity or "") if lease.spec else ""
        return any(o.pid is not None and f"-{o.pid}-" in holder for o in self.operators)

    def _check(self, observations: list[Observation], settled: bool) -> None:
        found: list[Violation] = []
        if not settled:
            found.append(Violation("not-converged", f"not settled within {self.settle_timeout:.0f}s"))
        dsds, objects = retrying(self._snapshot, what="final snapshot")
        nodes = {n.metadata.name for n in self.core.list_node(label_selector=f"{POOL_LABEL}={self.pool.name}").items}
        existing = {name: self.allocatable[name] for name in nodes}
        pods = [self.api_client.sanitize_for_serialization(p) for p in self.core.list_pod_for_all_namespaces().items]
        foreign: Counter[str] = Counter()
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node in self.allocatable and api.DEPLOYMENT_LABEL not in (
                (pod.get("metadata") or {}).get("labels") or {}
            ):
                foreign[node] += pod_requests(pod, self.allocatable[node][0])
        capacity = {name: devices - foreign[name] for name, (_, devices) in self.allocatable.items()}
        found += check_bookings_over_time(observations, capacity, self.lost_at)
        found += check_status_never_lost(observations, self.lost_at)
        found += check_nodes_fit(dsds, existing, pods)
        found += check_explained(dsds)
        found += check_no_orphans(dsds, objects)
        for operator in self.operators:
            if operator.died_unexpectedly():
                tail = "\n".join(operator.log_text().splitlines()[-5:])
                found.append(Violation("operator-died", f"{operator.log_path.name} exited: {tail}"))
        self.result.violations = found
        self.result.dsds = len(dsds)
        self.result.placements = sum(len((d.get("status") or {}).get("placements") or []) for d in dsds)

    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(ApiException):
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.25)


# ------------------------------------------------------------------------------------------- reports


def summary_table(results: Sequence[RunResult]) -> str:
    """Runs x faults x violations: per fault, the runs that had it, how often it was injected, the runs with a
    violation and the violations by invariant; a last row over all runs."""
    header = ["fault", "runs", "injected", "runs w/ violations", *INVARIANTS, "harness errors"]
    rows = []
    for fault in (*FAULTS, "(all runs)"):
        having = [r for r in results if fault == "(all runs)" or r.injected[fault]]
        injected = sum(r.injected[fault] for r in having) if fault != "(all runs)" else sum(
            sum(r.injected[f] for f in FAULTS) for r in results)  # fmt: skip
        counts = Counter[str]()
        for run in having:
            counts.update(run.violated())
        rows.append([fault, len(having), injected, sum(1 for r in having if r.violations),
                     *(counts[i] for i in INVARIANTS), sum(1 for r in having if r.harness_error)])  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    ]
    for row in rows:
        lines.append(
            "  ".join(
                f"{v!s:<{w}}" if i == 0 else f"{v!s:>{w}}" for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def run_line(result: RunResult) -> str:
    """One line per run: what it did and what it found."""
    did = " ".join(f"{a}x{n}" for a, n in sorted(result.injected.items()))
    found = ", ".join(f"{i}x{n}" for i, n in sorted(result.violated().items())) or "none"
    if result.harness_error:
        found += f"; HARNESS ERROR (no verdict): {result.harness_error}"
    return (f"run {result.index:3d} seed {result.seed:6d}  {result.seconds:5.1f}s "
            f"(settle {result.settle_seconds:5.1f}s)  DSDs {result.dsds:2d} placements {result.placements:2d} "
            f"versions {result.versions:3d}  "
            f"[{did}]  violations: {found}")  # fmt: skip


def connect(kubeconfig: str | None = None) -> tuple[client.ApiClient, str]:
    """An admin API client for the local control plane (or ``kubeconfig``) and the kubeconfig path."""
    path = kubeconfig or os.environ.get("DSPOOL_KUBECONFIG") or str(LOCAL_KUBECONFIG)
    return config.new_client_from_config(config_file=path), path
