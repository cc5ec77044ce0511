"""One reconcile pass: snapshot -> pool -> rebalancing -> reconcile per DSD -> writes, with the clock injected.

The pass decides every DSD one after another against one pool in memory (so two DSDs never book the
same device) and hands each DSD's writes to bounded pools of threads (``dspool.pass_writes``), so API
round trips overlap instead of queueing behind each other: the status first, then, all at once, its
objects, the deletion of objects it no longer wants, and its events. Decisions stay safe:

- a DSD's status (its reservations) is stored before any of its objects is written;
- when a decision frees devices (scale down, a lost node, a finished move), the pass waits for every
  write so far before deciding the next DSD: another DSD may book those devices only once the release is
  stored, so two stored statuses never claim the same device, even when a write fails;
- when a write fails or a decision raises, the pool is rebuilt from what is stored (after the writes in
  flight have finished) and the pass goes on with the next DSD;
- the pass ends when all its statuses are stored (its objects and events may still be on their way).

:meth:`PassRunner.run_pass` runs these steps, each a method of its own: prepare the pass
(:meth:`~PassRunner._prepare`), rebalance (:meth:`~PassRunner._rebalance`), then for each DSD
(:meth:`~PassRunner._pass_one`): decide it (:meth:`~PassRunner._decide`: a steady DSD keeps its remembered
decision), add what the cluster refuses to its status (:meth:`~PassRunner._status_to_write`), queue its
writes, and wait for them when it gives devices back; then wait for the last statuses
(:meth:`~PassRunner._settle`) and record the pass (:meth:`~PassRunner._record_pass`).

The pool lives between passes (:class:`dspool.inventory.LivePool`): a pass applies to it what the watches
changed since the last one (``Snapshot.changes``), decides on it, and hands it back as stored
(``LivePool.end_pass``); ``PassRunner(incremental=False)`` builds it from every node and pod instead, as before.

Nothing here talks to the API server: the writer is injected (``dspool.kube.writer`` in the operator, a
fake in the tests), and so are the clocks.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dspool import api
from dspool.api import Phase
from dspool.catalog import Catalog
from dspool.inventory import Booking, LivePool, NodeCache, Pool, WatchChanges, booked_reservations, build_pool
from dspool.ledger import digest, object_key
from dspool.metrics import DeploymentSample, OperatorMetrics, PassSample
from dspool.pass_writes import PassWrites, Writer, describe_failure
from dspool.placement import DemandMix
from dspool.placement.warm import prefetch_entries
from dspool.rebalance import rebalance_for_pass, status_with_moves
from dspool.reconcile import Event, ReconcileResult, ReconcileSettings, reconcile
from dspool.refusals import (
    WORKLOAD_KINDS,
    WorkloadRefusal,
    newly_refused,
    pods_wanted,
    refusals_by_deployment,
    with_workload_refusals,
)
from dspool.report import demand_of
from dspool.settings import OperatorSettings
from dspool.views import present_nodes
from dspool.weights.jobs import LAST_USED_ANNOTATION, cache_view, plan_cache
from dspool.weights.state import CacheView, EntryState
from dspool.weights.wanted import node_caches, wanted_entries
from dspool.workloads import DEFAULT_IMAGES

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
    cache_jobs: list[dict[str, Any]] = field(default_factory=list)  # the node model cache's record (fetch Jobs)
    # What the node and pod watches changed since the snapshot before (None: unknown, compare every view)
    changes: WatchChanges | None = None


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


def _pods_by_deployment(pods: Sequence[dict[str, Any]]) -> PodsByDeployment:
    """dspool's pods by (namespace, DSD label)."""
    grouped: PodsByDeployment = {}
    for pod in pods:
        owner = pod["metadata"]["labels"].get(api.DEPLOYMENT_LABEL)
        if owner:
            grouped.setdefault((pod["metadata"]["namespace"], owner), []).append(pod)
    return grouped


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


@dataclass
class _PassState:
    """One pass in progress: what its steps read (the snapshot, prepared once) and what they change (the
    pool, the outcome, the metrics' samples)."""

    snapshot: Snapshot
    now: datetime
    pool: Pool
    present: Collection[str]
    pods_by_deployment: PodsByDeployment
    bodies: list[dict[str, Any]]  # oldest first, with the statuses we wrote and the watch has not echoed yet
    demand: DemandMix | None
    reconcile_settings: ReconcileSettings  # as given: a steady decision holds it by reference
    settings: ReconcileSettings  # with the demand of this pass
    cache_nodes: tuple[dict[str, str], dict[str, int]] = field(default_factory=lambda: ({}, {}))  # uids, capacities
    notes: dict[str, str] = field(default_factory=dict)  # the rebalancer's, per DSD key
    started_moves: dict[str, tuple[list[Any], list[Any]]] = field(default_factory=dict)
    plan_events: dict[str, list[Event]] = field(default_factory=dict)
    refused: dict[tuple[str, str], list[WorkloadRefusal]] = field(default_factory=dict)  # workloads the cluster refuses
    outcome: PassOutcome = field(default_factory=PassOutcome)
    samples: list[DeploymentSample] = field(default_factory=list)
    decision_seconds: list[float] = field(default_factory=list)  # per placement decision (a metric)
    decided: float = 0.0  # seconds spent deciding (the rest of the pass is waiting for writes)
    delayed: bool = False  # the test hook's sleep happened


@dataclass
class _Decided:
    """One DSD decided in this pass: what its status and writes are built from."""

    key: str
    body: Mapping[str, Any]  # the stored DSD, with the moves the rebalancer started for it
    pods: list[dict[str, Any]]
    result: ReconcileResult
    started: float  # monotonic, when its decision started


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
        incremental: bool = True,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.writer = writer
        self.metrics = metrics
        self.now = now
        self.monotonic = monotonic
        self.sleep = sleep
        self.node_cache = NodeCache()  # nodes are parsed once per change, not once per pass
        # The pool kept between passes; without it (``incremental=False``, the benchmark's "before"), each pass
        # builds its pool from every node and pod.
        self.live = LivePool(catalog, settings.fabric_label) if incremental else None
        self.writes = PassWrites(writer, settings.write_concurrency)
        self._steady: dict[str, _Steady] = {}  # uid -> a decision that left it Ready
        self._workload_owners: dict[tuple[str, str], str] = {}  # (namespace, workload name) -> DSD label
        self._cache_states: dict[tuple[str, str], EntryState] = {}  # (entry, node) -> state, last pass

    def manages(self, namespace: str | None) -> bool:
        """Whether DSDs in this namespace are ours."""
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def build_pool(self, snapshot: Snapshot) -> Pool:
        """The pool as the snapshot (plus our own status writes not yet echoed by the watch) describes it, built
        from every node and pod (the pool kept between passes must end every pass equal to it)."""
        reservations = booked_reservations(self.bookings(snapshot))
        return build_pool(
            snapshot.nodes, snapshot.pods, reservations, self.catalog, self.settings.fabric_label, self.node_cache
        )

    def bookings(self, snapshot: Snapshot) -> list[Booking]:
        """What every DSD books: its stored placements, or what we wrote until the watch echoes it (a write the
        watch has echoed is dropped from the ledger here)."""
        ledger = self.writer.ledger
        found = []
        for entry in snapshot.deployments:
            meta = entry["metadata"]
            status = entry.get("status") or {}
            if ledger.unechoed(meta["uid"]) is not None:
                ledger.booking_of(meta["uid"], status)  # forgets our write once the stored status equals it
            written = ledger.unechoed(meta["uid"])
            placements = (written if written is not None else status).get("placements") or []
            found.append(Booking(f"{meta['namespace']}/{meta['name']}", (entry, written), placements))
        return found

    def _rebuild_pool(self, state: _PassState) -> None:
        """The pool from what is stored (a write failed, a decision raised): after the writes in flight."""
        if self.live is not None:
            state.pool = self.live.rebuild(self.bookings(state.snapshot))
        else:
            state.pool = self.build_pool(state.snapshot)

    def drain(self) -> None:
        """Wait until every follow-up write submitted so far has finished (tests, shutdown)."""
        self.writes.drain()

    def run_pass(self, snapshot: Snapshot, reconcile_settings: ReconcileSettings, leader: bool = True) -> PassOutcome:
        """One pass over every DSD, oldest first, reserving as it goes; returns when its statuses are stored.
        Raises :class:`NotLeadingError` when the Lease was lost mid-pass (the rest is not written)."""
        started = self.monotonic()
        try:
            state = self._prepare(snapshot, reconcile_settings)
            state.notes, state.started_moves, state.plan_events = self._rebalance(
                state.pool, state.bodies, state.pods_by_deployment, snapshot.pdbs, state.now, state.settings
            )
            state.refused = refusals_by_deployment(
                snapshot.failing_workloads, snapshot.failed_creates, self._workload_owners, state.now
            )
            for body in state.bodies:
                metadata = body["metadata"]
                if self.manages(metadata["namespace"]) and not metadata.get("deletionTimestamp"):
                    self._pass_one(state, body)
            self._settle(state)  # the pass ends when its statuses are stored; objects and events may follow
            self._fill_model_cache(state)
            if self.live is not None:
                self.live.end_pass(self.bookings(snapshot))  # the pool as stored, for the next pass
        except BaseException:
            if self.live is not None:
                self.live.interrupted()  # the next pass compares every view: these changes may be half applied
            raise
        finally:
            self.writes.cancel_pending()
        self._record_pass(state, self.monotonic() - started, leader)
        return state.outcome

    def _prepare(self, snapshot: Snapshot, reconcile_settings: ReconcileSettings) -> _PassState:
        """What the pass reads: the ledger and the steady decisions without deleted DSDs, the pool, the nodes
        present, each DSD's pods, the DSDs oldest first with what we wrote and the watch has not echoed yet,
        and the demand (the models of every DSD)."""
        now = self.now()
        live = {entry["metadata"]["uid"] for entry in snapshot.deployments}
        self.writer.ledger.forget_deleted(live)
        self._steady = {uid: entry for uid, entry in self._steady.items() if uid in live}
        pool, present, pods_by_deployment = self._pool_for_pass(snapshot, now)
        bodies = self._with_unechoed_statuses(snapshot.deployments)
        demand = DemandMix.of(demand_of(bodies, self.catalog)) if bodies else None
        cache_nodes: tuple[dict[str, str], dict[str, int]] = ({}, {})
        cache = reconcile_settings.model_cache
        if reconcile_settings.model_cache_dir is not None:  # a walk over every node: only with a model cache
            cache_nodes = node_caches(snapshot.nodes, self.settings.model_cache_gib)
            cache = cache_view(snapshot.cache_jobs, *cache_nodes)
        settings = dataclasses.replace(reconcile_settings, demand=demand, model_cache=cache)
        return _PassState(
            snapshot, now, pool, present, pods_by_deployment, bodies, demand, reconcile_settings, settings,
            cache_nodes=cache_nodes,
        )  # fmt: skip

    def _pool_for_pass(self, snapshot: Snapshot, now: datetime) -> tuple[Pool, Collection[str], PodsByDeployment]:
        """The pool, the nodes present and each DSD's pods: the pool kept between passes, brought up to date
        with what the watches changed, or (``incremental=False``) all built again from the snapshot. First in a
        pass: reading the bookings drops from the ledger the writes the watch has echoed."""
        grace = self.settings.node_grace_seconds
        if self.live is None:
            pool = self.build_pool(snapshot)
            return pool, present_nodes(snapshot.nodes, now, grace), _pods_by_deployment(snapshot.pods)
        pool = self.live.start_pass(snapshot.nodes, snapshot.pods, snapshot.changes, self.bookings(snapshot))
        return pool, self.live.present(now, grace), self.live.pods_by_deployment()

    def _with_unechoed_statuses(self, deployments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The DSDs oldest first, each with the status we wrote last until the watch echoes it."""
        bodies = []
        for body in sorted(
            deployments, key=lambda b: (b["metadata"].get("creationTimestamp") or "", b["metadata"]["name"])
        ):
            written = self.writer.ledger.unechoed(body["metadata"]["uid"])
            if written is not None:
                body = {**body, "status": {**(body.get("status") or {}), **written}}
            bodies.append(body)
        return bodies

    def _pass_one(self, state: _PassState, body: dict[str, Any]) -> None:
        """Decide one DSD, queue its writes, and wait for every write so far when it gives devices back."""
        decided = self._decide(state, body)
        if decided is None:
            return
        if self.settings.pass_delay_seconds and not state.delayed:
            state.delayed = True
            self.sleep(self.settings.pass_delay_seconds)  # tests: a slow pass, between deciding and writing
        old_status = decided.body.get("status") or {}
        status = self._status_to_write(state, decided, old_status)
        state.decided += self.monotonic() - decided.started
        self.writes.queue(decided.key, body["metadata"], status, old_status, decided.result)
        if _releases(old_status, status):
            # Freed devices may go to the next DSD only once this release is stored.
            state.outcome.barriers += 1
            if not self._settle(state):
                self._rebuild_pool(state)

    def _decide(self, state: _PassState, body: dict[str, Any]) -> _Decided | None:
        """One DSD's decision: none when it is steady (the remembered one stands) or when deciding raised
        (the pool is then rebuilt from what is stored)."""
        metadata = body["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        key = f"{namespace}/{name}"
        current = dict(body)
        if key in state.started_moves:  # destinations booked for another DSD's waiting replica
            current["status"] = status_with_moves(current.get("status") or {}, *state.started_moves[key])
        own_pods = state.pods_by_deployment.get((namespace, api.deployment_label_value(name)), [])
        note = state.notes.get(key)
        inputs = _Inputs(body, tuple(own_pods), state.reconcile_settings, note, state.started_moves.get(key),
                         self.writer.ledger.generation)  # fmt: skip
        steady = self._steady.get(uid)
        if steady is not None and steady.inputs.same(inputs, state.present) and self._still_steady(uid, steady):
            # Nothing it depends on changed since a decision that left it Ready, and everything that
            # decision wanted written is: the same decision, nothing to write.
            state.outcome.skipped += 1
            before = steady.result
            state.samples.append(DeploymentSample(namespace, name, before.desired or 0, before.status, own_pods))
            return None
        started = self.monotonic()
        try:
            result = reconcile(current, self.catalog, state.pool, own_pods, state.now, state.settings, state.present,
                               note)  # fmt: skip
        except Exception as exc:  # one broken DSD must not stall the others
            log.warning("reconciling %s failed (will retry): %s", key, describe_failure(exc))
            self._settle(state)  # the pool may hold half of that DSD's changes: rebuild it from what is stored
            self._rebuild_pool(state)
            state.outcome.barriers += 1
            return None
        result.events = [*state.plan_events.get(key, []), *result.events]
        state.outcome.results[key] = result
        self._remember_if_steady(uid, inputs, result)
        self.metrics.record_moves(result.moves_finished, result.moves_rolled_back, result.devices_freed)
        state.decision_seconds += result.decision_seconds
        desired = result.desired if result.desired is not None else 0
        state.samples.append(DeploymentSample(namespace, name, desired, result.status, own_pods))
        return _Decided(key, current, own_pods, result, started)

    def _status_to_write(self, state: _PassState, decided: _Decided, old_status: Mapping[str, Any]) -> dict[str, Any]:
        """The decided status, plus what the cluster refuses of the DSD: objects the API server refused
        (``WorkloadsAccepted``) and workloads whose pods it does not create (a ``WorkloadRefused`` event the
        first time). Remembers which DSD owns each workload, to attribute the next pass's refusals."""
        metadata = decided.body["metadata"]
        namespace, result = metadata["namespace"], decided.result
        status = with_refusals(result.status.wire(), old_status, self.writer.ledger.rejections(metadata["uid"]),
                               state.now)  # fmt: skip
        label = api.deployment_label_value(metadata["name"])
        for obj in result.objects:
            if obj["kind"] in WORKLOAD_KINDS:
                self._workload_owners[(namespace, obj["metadata"]["name"])] = label
        missing_pods = len(decided.pods) < pods_wanted(result.objects)
        refusals = state.refused.get((namespace, label), []) if missing_pods else []
        status = with_workload_refusals(status, old_status, refusals, state.now)
        if newly_refused(old_status, refusals):
            result.events.append(Event("Warning", "WorkloadRefused", status["message"]))
        return status

    def _settle(self, state: _PassState) -> bool:
        """The barrier: wait for every status queued so far and count it; True when all of them were stored."""
        settled = self.writes.settle()
        state.outcome.written += settled.written
        state.outcome.failed += settled.failed
        return settled.ok

    def _fill_model_cache(self, state: _PassState) -> None:
        """The node model cache: fetch Jobs for the entries the placements need where nodes lack them (within
        the bounds), evict Jobs where a cache is full, and finished or stale records deleted. A DSD waiting
        for weights is decided again next pass, so its WeightsReady condition follows the fetch."""
        images = state.settings.images
        fetch = self.settings.fetch_settings(images.fetcher if images is not None else DEFAULT_IMAGES.fetcher)
        if fetch is None or state.settings.model_cache_dir is None:
            return
        deployments = self._final_placements(state)
        wanted, known = wanted_entries(deployments, self.catalog)
        prefetch = prefetch_entries(state.pool, deployments, self.catalog, state.settings.model_cache)
        uids, capacities = state.cache_nodes
        plan = plan_cache(wanted, state.settings.model_cache, state.snapshot.cache_jobs, uids, capacities, known, fetch,
                          state.now, prefetch)  # fmt: skip
        stamp = {LAST_USED_ANNOTATION: state.now.isoformat().replace("+00:00", "Z")}
        self.writes.pool_objects(
            plan.create,
            [(ns, "batch/v1", "Job", name) for ns, name in plan.delete],
            [((ns, "batch/v1", "Job", name), stamp) for ns, name in plan.touch],
        )
        waiting_nodes = {
            node for item in wanted if not state.settings.model_cache.ready_on(node := item.node, item.entry.id)
        }
        for body in state.bodies:  # not steady while its weights are on their way: the condition must follow
            placements = api.placements_from_status(body.get("status"))
            if any(n.name in waiting_nodes for p in placements for n in p.nodes):
                self._steady.pop(body["metadata"]["uid"], None)

    @staticmethod
    def _final_placements(state: _PassState) -> list[tuple[str, Mapping[str, Any], list[api.ReplicaPlacement]]]:
        """(namespace, spec, placements) of every DSD, oldest first, as this pass left them."""
        deployments = []
        for body in state.bodies:
            metadata = body["metadata"]
            result = state.outcome.results.get(f"{metadata['namespace']}/{metadata['name']}")
            placements = (
                result.status.placements if result is not None else api.placements_from_status(body.get("status"))
            )
            deployments.append((metadata["namespace"], body.get("spec") or {}, list(placements)))
        return deployments

    def _count_fetches(self, cache: CacheView, started: int) -> None:
        """The fetch metrics: Jobs created this pass, and records that became Ready or Failed since the last."""
        records = {(e.entry, node): e for node, c in cache.nodes.items() for e in c.entries.values()}
        finished: list[float] = []
        failed = 0
        for key, record in records.items():
            if self._cache_states.get(key) != EntryState.FETCHING or record.state == EntryState.FETCHING:
                continue
            if record.state == EntryState.FAILED:
                failed += 1
            elif record.state == EntryState.READY and record.started_at and record.finished_at:
                finished.append(max(0.0, (record.finished_at - record.started_at).total_seconds()))
        self.metrics.record_fetches(started, failed, finished)
        self._cache_states = {key: record.state for key, record in records.items()}

    def _record_pass(self, state: _PassState, seconds: float, leader: bool) -> None:
        """Log a pass that wrote something, and record every pass in the metrics."""
        outcome = state.outcome
        if outcome.written:
            log.info("pass: %d DSDs decided in %.2f s (%d steady, not decided again), %d written, %d failed, "
                     "%.2f s in all", len(outcome.results), state.decided, outcome.skipped, outcome.written,
                     len(outcome.failed), seconds)  # fmt: skip
        # The metrics read the pool from the scrape thread: a copy of the pool kept between passes.
        pool = self.live.exported() if self.live is not None else state.pool
        sample = PassSample(
            pool, state.samples, seconds, leader=leader, catalog=self.catalog,
            demand=state.demand.models if state.demand else (), node_metrics=self.settings.node_metrics, at=state.now,
            model_cache=state.settings.model_cache if state.settings.model_cache_dir is not None else None,
        )  # fmt: skip
        self.metrics.record_pass(sample, state.decision_seconds)

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
            cache=settings.model_cache if settings.model_cache_dir is not None else None,
        )  # fmt: skip
        for started in found.plans:
            if started.plan is not None:
                self.metrics.record_plan(len(started.plan.moves), started=started.started)
        events = {key: [Event(e.type, e.reason, e.message) for e in told] for key, told in found.events.items()}
        writes: dict[str, tuple[list[Any], list[Any]]] = dict(found.writes)
        return found.notes, writes, events
