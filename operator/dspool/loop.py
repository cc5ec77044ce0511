"""One reconcile pass: snapshot -> pool -> rebalancing -> reconcile per DSD -> writes, with the clock injected.

The pass decides every DSD one after another against one pool in memory (so two DSDs never book the
same device) and hands each DSD's writes to bounded pools of threads, so API round trips overlap instead
of queueing behind each other: the status first, then, all at once, its objects, the deletion of objects
it no longer wants, and its events. Decisions stay safe:

- a DSD's status (its reservations) is stored before any of its objects is written;
- when a decision frees devices (scale down, a lost node, a finished move), the pass waits for every
  write so far before deciding the next DSD: another DSD may book those devices only once the release is
  stored, so two stored statuses never claim the same device, even when a write fails;
- when a write fails or a decision raises, the pool is rebuilt from what is stored (after the writes in
  flight have finished) and the pass goes on with the next DSD;
- the pass ends when all its writes have.

Nothing here talks to the API server: the writer is injected (``dspool.kube.writer`` in the operator, a
fake in the tests), and so are the clocks.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dspool import api
from dspool.api import Phase
from dspool.catalog import Catalog
from dspool.inventory import NodeCache, Pool, build_pool, reservations_from_status
from dspool.ledger import NotLeadingError, WriteLedger, digest, object_key, same_json
from dspool.metrics import DeploymentSample, OperatorMetrics, PassSample
from dspool.placement import DemandMix
from dspool.rebalance import rebalance_for_pass, status_with_moves
from dspool.reconcile import Event, ReconcileResult, ReconcileSettings, reconcile
from dspool.refusals import (
    WORKLOAD_KINDS,
    newly_refused,
    pods_wanted,
    refusals_by_deployment,
    with_workload_refusals,
)
from dspool.report import demand_of
from dspool.settings import OperatorSettings
from dspool.views import present_nodes

log = logging.getLogger("dspool")

PodsByDeployment = dict[tuple[str, str], list[dict[str, Any]]]


@dataclass
class Snapshot:
    """What the watches held at the start of a pass (plain lists; safe to read from a worker thread)."""

    nodes: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    deployments: list[dict[str, Any]]
    pdbs: list[dict[str, Any]] = field(default_factory=list)
    # dspool's workloads whose pod creation the cluster refuses, and FailedCreate events (dspool.refusals)
    failing_workloads: list[dict[str, Any]] = field(default_factory=list)
    failed_creates: list[dict[str, Any]] = field(default_factory=list)


class Writer(Protocol):
    """The API writes a pass makes (blocking; called from several threads at once)."""

    ledger: WriteLedger

    def write_status(self, namespace: str, name: str, status: dict[str, Any], old: Mapping[str, Any]) -> None:
        """Patch a DSD's status (nothing when unchanged); raises on failure."""

    def apply_object(self, uid: str, namespace: str, obj: dict[str, Any]) -> None:
        """Server-side apply one object a DSD wants (and record it, or its refusal, in the ledger)."""

    def delete_stale(self, uid: str, namespace: str, name: str, objects: Sequence[dict[str, Any]]) -> None:
        """Delete the objects a DSD wanted before and no longer wants."""

    def post_events(self, metadata: Mapping[str, Any], events: Sequence[Event]) -> None:
        """Post events on a DSD (each at most once per repeat period)."""


@dataclass
class PassOutcome:
    """What a pass decided (for tests and logs): results per DSD key, and the DSDs whose writes failed."""

    results: dict[str, ReconcileResult] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    barriers: int = 0  # times the pass waited for its writes before deciding on
    written: int = 0  # DSDs whose status changed and was stored
    skipped: int = 0  # steady DSDs whose inputs did not change: not decided again


def utc_now() -> datetime:
    """The wall clock, as the pass reads it (injected so tests can move time)."""
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status is not None:
        return f"{status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


REFUSED_CONDITION = "WorkloadsAccepted"


def with_refusals(
    status: dict[str, Any], old: Mapping[str, Any], refusals: Sequence[str], now: datetime
) -> dict[str, Any]:
    """A status that says which of the DSD's objects the API server refused, and why (condition
    ``WorkloadsAccepted=False``, reason ``Refused``); unchanged when nothing was refused."""
    if not refusals:
        return status
    before = next((c for c in old.get("conditions") or [] if c.get("type") == REFUSED_CONDITION), None)
    since = (before or {}).get("lastTransitionTime") or now.strftime("%Y-%m-%dT%H:%M:%SZ")
    why = "; ".join(refusals)[:1024]
    condition = {"type": REFUSED_CONDITION, "status": "False", "reason": "Refused", "message": why,
                 "lastTransitionTime": since}  # fmt: skip
    return {
        **status,
        "conditions": [*(status.get("conditions") or []), condition],
        "message": f"the API server refused its workloads: {why}"[:1024],
    }


def _releases(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a new status gives back devices the old one booked (a replica or a node dropped)."""
    kept = {
        (p.get("replica"), n.get("name"), n.get("devices"))
        for p in new.get("placements") or []
        for n in p.get("nodes") or []
    }
    return any(
        (p.get("replica"), n.get("name"), n.get("devices")) not in kept
        for p in old.get("placements") or []
        for n in p.get("nodes") or []
    )


@dataclass(frozen=True)
class _Inputs:
    """What one DSD's decision depends on, held by reference: the watch replaces a view when it changes, so
    the same objects mean the same inputs (holding them also keeps their identity from being reused)."""

    body: Mapping[str, Any]
    pods: tuple[Mapping[str, Any], ...]
    settings: ReconcileSettings
    note: str | None
    started_moves: Any
    generation: int  # the ledger's: objects forgotten (the periodic re-apply, a new term) means decide again

    def same(self, other: _Inputs, present: Collection[str]) -> bool:
        """The same inputs, and every node of the DSD's placements still present."""
        nodes = [n.get("name") for p in (self.body.get("status") or {}).get("placements") or [] for n in p["nodes"]]
        return (
            other.body is self.body
            and other.settings is self.settings
            and other.note == self.note
            and other.generation == self.generation
            and other.started_moves is None
            and len(other.pods) == len(self.pods)
            and all(a is b for a, b in zip(other.pods, self.pods, strict=True))
            and all(node in present for node in nodes)
        )


@dataclass(frozen=True)
class _Steady:
    """A remembered decision that left its DSD Ready, and what it wanted written."""

    inputs: _Inputs
    result: ReconcileResult
    objects: tuple[tuple[tuple[str, str, str, str], str], ...]  # (object key, content hash)
    wanted: frozenset[tuple[str, str, str]]


class PassRunner:
    """Runs reconcile passes for one operator: the pool, the decisions and the order of the writes."""

    def __init__(
        self,
        settings: OperatorSettings,
        catalog: Catalog,
        writer: Writer,
        metrics: OperatorMetrics,
        now: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.writer = writer
        self.metrics = metrics
        self.now = now
        self.monotonic = monotonic
        self.sleep = sleep
        self.node_cache = NodeCache()  # nodes are parsed once per change, not once per pass
        self._busy: dict[Hashable, Future[None]] = {}  # follow-up writes in flight, by object
        self._applying: dict[str, int] = {}  # object applies in flight, by DSD
        self._in_flight = 0  # follow-up writes in flight
        self._busy_lock = threading.Lock()
        self._steady: dict[str, _Steady] = {}  # uid -> a decision that left it Ready
        self._workload_owners: dict[tuple[str, str], str] = {}  # (namespace, workload name) -> DSD label
        # Statuses and the writes that follow them run on separate threads, so a status never waits behind
        # another DSD's objects, and a DSD's objects and events go out at once.
        self.executor = ThreadPoolExecutor(max_workers=settings.write_concurrency, thread_name_prefix="dspool-status")
        self.followup_executor = ThreadPoolExecutor(
            max_workers=settings.write_concurrency, thread_name_prefix="dspool-write"
        )
        # Services, stale deletions and events on their own threads: a Service create waits for a cluster IP
        # (over a second each in a burst of them on the local control plane), and must not hold up workloads.
        self.secondary_executor = ThreadPoolExecutor(
            max_workers=max(2, settings.write_concurrency // 4), thread_name_prefix="dspool-write-more"
        )

    def manages(self, namespace: str | None) -> bool:
        """Whether DSDs in this namespace are ours."""
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def build_pool(self, snapshot: Snapshot) -> Pool:
        """The pool as the snapshot (plus our own status writes not yet echoed by the watch) describes it."""
        reservations = []
        for entry in snapshot.deployments:
            meta = entry["metadata"]
            stored = self.writer.ledger.booking_of(meta["uid"], entry.get("status") or {})
            parsed = api.placements_from_status({"placements": stored["placements"]})
            reservations.extend(reservations_from_status(meta["namespace"], meta["name"], parsed))
        return build_pool(
            snapshot.nodes, snapshot.pods, reservations, self.catalog, self.settings.fabric_label, self.node_cache
        )

    def run_pass(self, snapshot: Snapshot, reconcile_settings: ReconcileSettings, leader: bool = True) -> PassOutcome:
        """One pass over every DSD, oldest first, reserving as it goes; returns when its writes are done.
        Raises :class:`NotLeadingError` when the Lease was lost mid-pass (the rest is not written)."""
        started = self.monotonic()
        now = self.now()
        ledger = self.writer.ledger
        live = {entry["metadata"]["uid"] for entry in snapshot.deployments}
        ledger.forget_deleted(live)
        self._steady = {uid: entry for uid, entry in self._steady.items() if uid in live}
        pool = self.build_pool(snapshot)
        present = present_nodes(snapshot.nodes, now, self.settings.node_grace_seconds)
        pods_by_deployment: PodsByDeployment = {}
        for pod in snapshot.pods:
            owner = pod["metadata"]["labels"].get(api.DEPLOYMENT_LABEL)
            if owner:
                pods_by_deployment.setdefault((pod["metadata"]["namespace"], owner), []).append(pod)
        bodies = []
        for body in sorted(
            snapshot.deployments, key=lambda b: (b["metadata"].get("creationTimestamp") or "", b["metadata"]["name"])
        ):
            written = ledger.unechoed(body["metadata"]["uid"])
            if written is not None:  # what we wrote last, until the watch echoes it
                body = {**body, "status": {**(body.get("status") or {}), **written}}
            bodies.append(body)
        demand = DemandMix.of(demand_of(bodies, self.catalog)) if bodies else None
        settings = dataclasses.replace(reconcile_settings, demand=demand)
        notes, started_moves, plan_events = self._rebalance(
            pool, bodies, pods_by_deployment, snapshot.pdbs, now, settings
        )

        refused = refusals_by_deployment(
            snapshot.failing_workloads, snapshot.failed_creates, self._workload_owners, now
        )
        outcome = PassOutcome()
        pending: list[tuple[str, Future[bool | None]]] = []
        samples: list[DeploymentSample] = []
        decision_seconds: list[float] = []
        delayed = False

        def settle() -> bool:
            """Wait for every write in flight; True when all of them were stored."""
            ok = True
            for key, future in pending:
                stored = future.result()  # re-raises NotLeadingError from a worker
                if stored is None:
                    continue  # the status was unchanged: nothing written
                if stored:
                    outcome.written += 1
                else:
                    outcome.failed.append(key)
                    ok = False
            pending.clear()
            return ok

        decided = 0.0  # seconds spent deciding (the rest of the pass is waiting for writes)
        try:
            for body in bodies:
                metadata = body["metadata"]
                if not self.manages(metadata["namespace"]) or metadata.get("deletionTimestamp"):
                    continue
                namespace, name = metadata["namespace"], metadata["name"]
                key = f"{namespace}/{name}"
                current = dict(body)
                if key in started_moves:  # destinations booked for another DSD's waiting replica
                    current["status"] = status_with_moves(current.get("status") or {}, *started_moves[key])
                own_pods = pods_by_deployment.get((namespace, api.deployment_label_value(name)), [])
                steady = self._steady.get(metadata["uid"])
                inputs = _Inputs(
                    body, tuple(own_pods), reconcile_settings, notes.get(key), started_moves.get(key), ledger.generation
                )
                uid = metadata["uid"]
                if steady is not None and steady.inputs.same(inputs, present) and self._still_steady(uid, steady):
                    # Nothing it depends on changed since a decision that left it Ready, and everything that
                    # decision wanted written is: the same decision, nothing to write.
                    outcome.skipped += 1
                    before = steady.result
                    samples.append(DeploymentSample(namespace, name, before.desired or 0, before.status, own_pods))
                    continue
                decision_started = self.monotonic()
                try:
                    result = reconcile(current, self.catalog, pool, own_pods, now, settings, present, notes.get(key))
                except Exception as exc:  # one broken DSD must not stall the others
                    log.warning("reconciling %s failed (will retry): %s", key, _describe(exc))
                    settle()  # the pool may hold half of that DSD's changes: rebuild it from what is stored
                    pool = self.build_pool(snapshot)
                    outcome.barriers += 1
                    continue
                result.events = [*plan_events.get(key, []), *result.events]
                outcome.results[key] = result
                self._remember_if_steady(metadata["uid"], inputs, result)
                self.metrics.record_moves(result.moves_finished, result.moves_rolled_back, result.devices_freed)
                decision_seconds += result.decision_seconds
                desired = result.desired if result.desired is not None else 0
                samples.append(DeploymentSample(namespace, name, desired, result.status, own_pods))
                if self.settings.pass_delay_seconds and not delayed:
                    delayed = True
                    self.sleep(self.settings.pass_delay_seconds)  # tests: a slow pass, between deciding and writing
                old_status = current.get("status") or {}
                status = with_refusals(result.status.wire(), old_status, ledger.rejections(metadata["uid"]), now)
                label = api.deployment_label_value(name)
                for obj in result.objects:
                    if obj["kind"] in WORKLOAD_KINDS:
                        self._workload_owners[(namespace, obj["metadata"]["name"])] = label
                missing_pods = len(own_pods) < pods_wanted(result.objects)
                refusals = refused.get((namespace, label), []) if missing_pods else []
                status = with_workload_refusals(status, old_status, refusals, now)
                if newly_refused(old_status, refusals):
                    result.events.append(Event("Warning", "WorkloadRefused", status["message"]))
                decided += self.monotonic() - decision_started
                job = self.executor.submit(self._write_one, dict(metadata), status, old_status, result)
                pending.append((key, job))
                if _releases(old_status, status):
                    # Freed devices may go to the next DSD only once this release is stored.
                    outcome.barriers += 1
                    if not settle():
                        pool = self.build_pool(snapshot)
            settle()  # the pass ends when its statuses are stored; objects and events may still be on their way
        finally:
            for _, future in pending:
                future.cancel()
        seconds = self.monotonic() - started
        if outcome.written:
            log.info("pass: %d DSDs decided in %.2f s (%d steady, not decided again), %d written, %d failed, "
                     "%.2f s in all", len(outcome.results), decided, outcome.skipped, outcome.written,
                     len(outcome.failed), seconds)  # fmt: skip
        sample = PassSample(
            pool, samples, seconds, leader=leader, catalog=self.catalog,
            demand=demand.models if demand else (), node_metrics=self.settings.node_metrics, at=now,
        )  # fmt: skip
        self.metrics.record_pass(sample, decision_seconds)
        return outcome

    def _write_one(
        self, metadata: Mapping[str, Any], status: dict[str, Any], old: Mapping[str, Any], result: ReconcileResult
    ) -> bool | None:
        """A DSD's status (its reservations); once stored, its objects, stale objects and events are handed
        to the follow-up writers, all at once. True when the status was stored, None when it was unchanged,
        False when it could not be written (nothing else is then written)."""
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        changed = not same_json(status, dict(old))
        if changed:
            try:
                self.writer.write_status(namespace, name, status, old)
            except NotLeadingError:
                raise
            except Exception as exc:
                log.warning("writing the status of %s/%s failed (will retry): %s", namespace, name, _describe(exc))
                return False
            self.writer.ledger.record_booking(uid, status)
        if not result.hold:
            ledger = self.writer.ledger
            for obj in result.objects:
                key, content = object_key(namespace, obj), digest(obj)
                if not ledger.applied_unchanged(key, content) and not ledger.is_rejected(uid, key, content):
                    pool = self.secondary_executor if obj["kind"] == "Service" else self.followup_executor
                    self._follow_up(
                        pool, key, uid, "applying", namespace, name, self.writer.apply_object, uid, namespace, obj
                    )
            self._follow_up(self.secondary_executor, ("stale", uid), uid, "deleting stale objects of", namespace,
                            name, self.writer.delete_stale, uid, namespace, name, result.objects)  # fmt: skip
        if result.events:  # events tell the story even when objects could not be written
            self._follow_up(self.secondary_executor, None, uid, "posting events of", namespace, name,
                            self.writer.post_events, metadata, result.events)  # fmt: skip
        return True if changed else None

    def _follow_up(
        self, pool: ThreadPoolExecutor, key: Hashable | None, uid: str, what: str, namespace: str, name: str,
        write: Callable[..., None], *args: Any,
    ) -> None:  # fmt: skip
        """Submit one follow-up write, at most one in flight per object: an object still being written by an
        earlier pass is skipped now and written by a later pass if its content changed meanwhile (two writes
        of one object never race). Stale objects of a DSD are deleted only while none of its objects is being
        applied, so a late apply cannot bring back what was just deleted (the DSD is decided again, and its
        stale objects looked for again, until that deletion has happened: see ``_still_steady``)."""
        applies = isinstance(key, tuple) and key[:1] != ("stale",)
        with self._busy_lock:
            if key is not None and key in self._busy:
                return
            if isinstance(key, tuple) and key[:1] == ("stale",) and self._applying.get(uid):
                return
            if applies:
                self._applying[uid] = self._applying.get(uid, 0) + 1
            self._in_flight += 1
            future = pool.submit(self._guarded, what, namespace, name, write, *args)
            if key is not None:
                self._busy[key] = future

        def done(_: Future[None]) -> None:
            with self._busy_lock:
                self._in_flight -= 1
                if key is not None:
                    self._busy.pop(key, None)
                if applies:
                    left = self._applying.get(uid, 1) - 1
                    if left:
                        self._applying[uid] = left
                    else:
                        self._applying.pop(uid, None)

        future.add_done_callback(done)

    def drain(self) -> None:
        """Wait until every follow-up write submitted so far has finished (tests, shutdown)."""
        while True:
            with self._busy_lock:
                busy = list(self._busy.values())
                idle = not self._in_flight
            if idle:
                return
            for future in busy:
                future.exception()
            if not busy:
                time.sleep(0.01)  # writes without an object key (events) are still on their way

    def _remember_if_steady(self, uid: str, inputs: _Inputs, result: ReconcileResult) -> None:
        """Keep a decision that leaves a DSD Ready, every replica placed and nothing moving: while none of its
        inputs changes, the next passes would decide exactly the same."""
        status = result.status
        if (
            status.phase == Phase.READY
            and not status.moves
            and not result.events
            and not result.hold
            and result.desired == len(status.placements)
            and inputs.started_moves is None
        ):
            namespace = inputs.body["metadata"]["namespace"]
            objects = tuple((object_key(namespace, obj), digest(obj)) for obj in result.objects)
            wanted = frozenset((obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in result.objects)
            self._steady[uid] = _Steady(inputs, result, objects, wanted)
        else:
            self._steady.pop(uid, None)

    def _still_steady(self, uid: str, steady: _Steady) -> bool:
        """Whether what the remembered decision wanted written is written: every object applied with that
        content, and the objects it no longer wants deleted (a write that failed or was skipped because an
        earlier one was in flight makes the DSD decided, and written, again)."""
        ledger = self.writer.ledger
        return ledger.wants(uid, steady.wanted) and all(ledger.applied_unchanged(k, d) for k, d in steady.objects)

    @staticmethod
    def _guarded(what: str, namespace: str, name: str, write: Callable[..., None], *args: Any) -> None:
        """One follow-up write; a failure is logged and retried by the next pass (the fence is re-raised)."""
        try:
            write(*args)
        except NotLeadingError:
            raise
        except Exception as exc:
            log.warning("%s %s/%s failed (will retry): %s", what, namespace, name, _describe(exc))

    def _rebalance(
        self,
        pool: Pool,
        bodies: list[dict[str, Any]],
        pods_by_deployment: PodsByDeployment,
        pdbs: list[dict[str, Any]],
        now: datetime,
        settings: ReconcileSettings,
    ) -> tuple[dict[str, str], dict[str, tuple[list[Any], list[Any]]], dict[str, list[Event]]]:
        """The pass's rebalancing, before any DSD is reconciled: notes for waiting DSDs (the Rebalancing
        condition), new copies to add to moved DSDs (mode ``on``; booked in ``pool``), and events."""
        found = rebalance_for_pass(
            pool, bodies, pods_by_deployment, pdbs, now, self.catalog, self.settings.rebalance_mode,
            manages=self.manages, policy=settings.rebalance_policy, demand=settings.demand,
            engine_image=settings.images.vllm if settings.images else None,
        )  # fmt: skip
        for started in found.plans:
            if started.plan is not None:
                self.metrics.record_plan(len(started.plan.moves), started=started.started)
        events = {key: [Event(e.type, e.reason, e.message) for e in told] for key, told in found.events.items()}
        writes: dict[str, tuple[list[Any], list[Any]]] = dict(found.writes)
        return found.notes, writes, events
