"""Leader election on a coordination.k8s.io/v1 Lease, fenced: only one operator decides and writes.

Two operators deciding over the same nodes would each book devices the other just booked. During a
rolling upgrade both run for a while; the Lease lets only its holder place replicas. Operators that
manage disjoint pools (``--node-selector``) may use different lease names.

As client-go's leader election does:

- **Expiry is judged by observation, not by timestamps.** A candidate takes the Lease only when the
  record (holder, renew time, resource version) has not changed for ``duration`` seconds *as measured by
  its own clock since it last saw it change*; clock skew between machines does not matter.
- **The holder steps down before anyone may take over.** It counts as leading only while its last
  successful renewal is younger than ``renew_deadline`` (shorter than ``duration``); a holder that cannot
  renew (API server unreachable, a stalled process) stops writing at once, while candidates still wait the
  full ``duration``. :meth:`LeaderLease.leading` is the fence every write checks (``dspool.kube.writer``).
- **Renewal runs on its own timer** (:class:`LeaseKeeper`, a thread), so a long reconcile pass cannot let
  the Lease lapse while the operator still writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dspool.ledger import NotLeadingError

log = logging.getLogger("dspool")

REQUEST_TIMEOUT_SECONDS = 10
__all__ = ["LeaderLease", "LeaseKeeper", "NotLeadingError"]


class LeaderLease:
    """Acquire, renew and release one Lease; every method but :meth:`leading` is a blocking API call."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: int = 15,
        renew_deadline_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration_seconds
        self.renew_deadline = renew_deadline_seconds if renew_deadline_seconds is not None else duration_seconds * 2 / 3
        self.clock = clock
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # clock time of our last successful acquire or renew

    def leading(self) -> bool:
        """Whether this process may write now: it holds the Lease and renewed it within the renew deadline."""
        renewed = self._renewed_at
        return renewed is not None and self.clock() - renewed < self.renew_deadline

    def _observe(self, lease: client.V1Lease) -> None:
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    def acquire_or_renew(self) -> bool:
        """True when this process holds the lease afterwards (taken free or expired, or renewed)."""
        started = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._succeeded(self._create(), started)
        self._observe(lease)
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        duration = spec.lease_duration_seconds or self.duration
        expired = self.clock() - self._observed_at > duration
        if holder not in (None, "", self.identity) and not expired:
            self._renewed_at = None
            return False
        now = datetime.now(UTC)
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info("taking the lease %s/%s (was %s)", self.namespace, self.name, holder or "free")
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = self.duration
        lease.spec = spec
        try:  # replace carries the resourceVersion: a concurrent taker makes this fail with 409
            updated = self.api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status == 409:
                self._renewed_at = None
                return False
            raise
        self._observe(updated)
        return self._succeeded(True, started)

    def _succeeded(self, held: bool, started: float) -> bool:
        # The renewal counts from when it was asked for: a slow answer shortens the lead, never extends it.
        self._renewed_at = started if held else None
        return held

    def _create(self) -> bool:
        now = datetime.now(UTC)
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                acquire_time=now,
                renew_time=now,
                lease_duration_seconds=self.duration,
                lease_transitions=0,
            ),
        )
        try:
            created = self.api.create_namespaced_lease(self.namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._observe(created)
        return True

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so the next operator need not wait for it to expire."""
        self._renewed_at = None
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            self.api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            log.warning("could not release the lease: %s %s", exc.status, exc.reason)


class LeaseKeeper:
    """Renews (or tries to take) the Lease every ``retry_seconds`` on its own thread, whatever a pass does."""

    def __init__(self, lease: LeaderLease, retry_seconds: float, on_change: Callable[[bool], None]) -> None:
        self.lease = lease
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dspool-lease", daemon=True)
        self._was_leading = False

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the caller releases the Lease if it wants to hand over at once)."""
        self._stop.set()
        self._thread.join(timeout=self.retry_seconds + REQUEST_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lease.acquire_or_renew()
            except Exception as exc:  # an unreachable API server: the renew deadline fences us soon
                log.warning("renewing the lease failed: %s", exc)
            leading = self.lease.leading()
            if leading != self._was_leading:
                self._was_leading = leading
                self.on_change(leading)
            self._stop.wait(self.retry_seconds)
