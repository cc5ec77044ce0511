"""Leader election on a coordination.k8s.io/v1 Lease: one operator decides for a pool at a time.

Two operators deciding over the same nodes would each book devices the other just booked. During a
rolling upgrade both run for a while; the Lease lets only its holder place replicas. Operators that
manage disjoint pools (``--node-selector``) may use different lease names.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("dspool")

REQUEST_TIMEOUT_SECONDS = 30


class LeaderLease:
    """Acquire, renew and release one Lease; every method is a blocking API call (run it in a thread)."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, name: str, identity: str, duration_seconds: int = 15
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration_seconds

    def acquire_or_renew(self, now: datetime | None = None) -> bool:
        """True when this process holds the lease afterwards (taken free or expired, or renewed)."""
        now = now or datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create(now)
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        renewed = spec.renew_time
        expired = renewed is None or renewed + timedelta(seconds=spec.lease_duration_seconds or self.duration) < now
        if holder not in (None, "", self.identity) and not expired:
            return False
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info("taking the lease %s/%s (was %s)", self.namespace, self.name, holder or "free")
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = self.duration
        lease.spec = spec
        try:  # replace carries the resourceVersion: a concurrent taker makes this fail with 409
            self.api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _create(self, now: datetime) -> bool:
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
            self.api.create_namespaced_lease(self.namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so the next operator need not wait for it to expire."""
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
