"""The writes of the passes (``dspool.loop``): threads, order, at most one write in flight per object.

A pass queues each DSD's writes here as soon as it has decided it: the status (its reservations) goes to
one pool of threads; once it is stored, the DSD's objects, the deletion of objects it no longer wants and
its events go, all at once, to two more pools (workloads on one; Services, stale deletions and events on
the other). :meth:`PassWrites.settle` is the pass's barrier: it waits for every status queued so far.

Nothing here talks to the API server: the writer is injected (``dspool.kube.writer`` in the operator, a
fake in the tests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from dspool.ledger import NotLeadingError, WriteLedger, digest, object_key, same_json
from dspool.reconcile import Event, ReconcileResult

log = logging.getLogger("dspool")
POOL_OWNER = "dspool-pool"  # the ledger's owner of objects that belong to the pool, not to one DSD


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

    def delete_object(self, namespace: str, api_version: str, kind: str, name: str) -> None:
        """Delete one object (gone already is fine)."""

    def annotate(self, namespace: str, api_version: str, kind: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto one object (gone already is fine)."""


def describe_failure(exc: BaseException) -> str:
    """A failed call in one line: the API server's status and reason, else the exception."""
    status = getattr(exc, "status", None)
    if status is not None:
        return f"{status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Settled:
    """The statuses a barrier waited for: how many were stored, and the DSDs (keys) whose write failed."""

    written: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every status queued was stored (or unchanged)."""
        return not self.failed


class PassWrites:
    """The write side of the passes of one operator: a pass queues each DSD's status and its follow-up
    writes, and waits for the statuses at its barriers; follow-up writes may outlive the pass."""

    def __init__(self, writer: Writer, concurrency: int) -> None:
        self.writer = writer
        self._pending: list[tuple[str, Future[bool | None]]] = []  # statuses queued since the last barrier
        self._busy: dict[Hashable, Future[None]] = {}  # follow-up writes in flight, by object
        self._applying: dict[str, int] = {}  # object applies in flight, by DSD
        self._in_flight = 0  # follow-up writes in flight
        self._busy_lock = threading.Lock()
        # Statuses and the writes that follow them run on separate threads, so a status never waits behind
        # another DSD's objects, and a DSD's objects and events go out at once.
        self.status_threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dspool-status")
        self.object_threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dspool-write")
        # Services, stale deletions and events on their own threads: a Service create waits for a cluster IP
        # (over a second each in a burst of them on the local control plane), and must not hold up workloads.
        self.secondary_threads = ThreadPoolExecutor(
            max_workers=max(2, concurrency // 4), thread_name_prefix="dspool-write-more"
        )

    def queue(
        self, key: str, metadata: Mapping[str, Any], status: dict[str, Any], old: Mapping[str, Any],
        result: ReconcileResult,
    ) -> None:  # fmt: skip
        """Queue a DSD's writes: its status, then (once stored) its objects, stale objects and events."""
        job = self.status_threads.submit(self._write_one, dict(metadata), status, old, result)
        self._pending.append((key, job))

    def pool_objects(
        self,
        apply: Sequence[dict[str, Any]],
        delete: Sequence[tuple[str, str, str, str]],
        annotate: Sequence[tuple[tuple[str, str, str, str], dict[str, str]]] = (),
    ) -> None:
        """Write objects that belong to the pool, not to one DSD (the node model cache's Jobs): apply these,
        delete those and annotate others ((namespace, apiVersion, kind, name)); at most one write in flight per
        object."""
        for (namespace, api_version, kind, name), stamped in annotate:
            self._follow_up(self.secondary_threads, ("annotate", namespace, api_version, kind, name), POOL_OWNER,
                            "annotating", namespace, name, self.writer.annotate, namespace, api_version, kind, name,
                            stamped)  # fmt: skip
        for obj in apply:
            namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            if not self.writer.ledger.applied_unchanged(object_key(namespace, obj), digest(obj)):
                self._follow_up(self.secondary_threads, object_key(namespace, obj), POOL_OWNER, "applying", namespace,
                                name, self.writer.apply_object, POOL_OWNER, namespace, obj)  # fmt: skip
        for namespace, api_version, kind, name in delete:
            self._follow_up(self.secondary_threads, ("delete", namespace, api_version, kind, name), POOL_OWNER,
                            "deleting", namespace, name, self.writer.delete_object, namespace, api_version, kind,
                            name)  # fmt: skip

    def settle(self) -> Settled:
        """Wait for every status queued since the last barrier (re-raises :class:`NotLeadingError` from a
        worker); objects and events may still be on their way."""
        settled = Settled()
        for key, future in self._pending:
            stored = future.result()
            if stored is None:
                continue  # the status was unchanged: nothing written
            if stored:
                settled.written += 1
            else:
                settled.failed.append(key)
        self._pending.clear()
        return settled

    def cancel_pending(self) -> None:
        """Cancel the statuses queued and not started yet (the pass is over, or raised)."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

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
                log.warning(
                    "writing the status of %s/%s failed (will retry): %s", namespace, name, describe_failure(exc)
                )
                return False
            self.writer.ledger.record_booking(uid, status)
        if not result.hold:
            self._apply_objects(uid, namespace, name, result.objects)
        if result.events:  # events tell the story even when objects could not be written
            self._follow_up(self.secondary_threads, None, uid, "posting events of", namespace, name,
                            self.writer.post_events, metadata, result.events)  # fmt: skip
        return True if changed else None

    def _apply_objects(self, uid: str, namespace: str, name: str, objects: list[dict[str, Any]]) -> None:
        """Apply the objects the ledger does not hold with this content (nor as refused), then delete the
        objects the DSD no longer wants."""
        ledger = self.writer.ledger
        for obj in objects:
            key, content = object_key(namespace, obj), digest(obj)
            if not ledger.applied_unchanged(key, content) and not ledger.is_rejected(uid, key, content):
                threads = self.secondary_threads if obj["kind"] == "Service" else self.object_threads
                self._follow_up(threads, key, uid, "applying", namespace, name, self.writer.apply_object, uid,
                                namespace, obj)  # fmt: skip
        self._follow_up(self.secondary_threads, ("stale", uid), uid, "deleting stale objects of", namespace,
                        name, self.writer.delete_stale, uid, namespace, name, objects)  # fmt: skip

    def _follow_up(
        self, threads: ThreadPoolExecutor, key: Hashable | None, uid: str, what: str, namespace: str, name: str,
        write: Callable[..., None], *args: Any,
    ) -> None:  # fmt: skip
        """Submit one follow-up write, at most one in flight per object: an object still being written by an
        earlier pass is skipped now and written by a later pass if its content changed meanwhile (two writes
        of one object never race). Stale objects of a DSD are deleted only while none of its objects is being
        applied, so a late apply cannot bring back what was just deleted (the DSD is decided again, and its
        stale objects looked for again, until that deletion has happened: see ``PassRunner._still_steady``)."""
        applies = isinstance(key, tuple) and key[:1] != ("stale",)
        with self._busy_lock:
            if key is not None and key in self._busy:
                return
            if isinstance(key, tuple) and key[:1] == ("stale",) and self._applying.get(uid):
                return
            if applies:
                self._applying[uid] = self._applying.get(uid, 0) + 1
            self._in_flight += 1
            future = threads.submit(_guarded, what, namespace, name, write, *args)
            if key is not None:
                self._busy[key] = future
        future.add_done_callback(lambda _: self._done(key, uid, applies))

    def _done(self, key: Hashable | None, uid: str, applies: bool) -> None:
        """A follow-up write finished: its object (and, for an apply, its DSD) is free for the next one."""
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


def _guarded(what: str, namespace: str, name: str, write: Callable[..., None], *args: Any) -> None:
    """One follow-up write; a failure is logged and retried by the next pass (the fence is re-raised)."""
    try:
        write(*args)
    except NotLeadingError:
        raise
    except Exception as exc:
        log.warning("%s %s/%s failed (will retry): %s", what, namespace, name, describe_failure(exc))
