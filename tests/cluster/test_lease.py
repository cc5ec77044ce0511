"""Leader election on a real Lease: only one operator decides for a pool at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubernetes import client

from dspool.lease import LeaderLease


def test_one_holder_at_a_time_and_takeover_after_expiry_or_release(
    api_client: client.ApiClient, namespace: str
) -> None:
    first = LeaderLease(api_client, namespace, "pool-a", "operator-1", duration_seconds=15)
    second = LeaderLease(api_client, namespace, "pool-a", "operator-2", duration_seconds=15)
    assert first.acquire_or_renew()
    assert not second.acquire_or_renew()  # held and fresh
    assert first.acquire_or_renew()  # renewal by the holder
    later = datetime.now(UTC) + timedelta(seconds=20)
    assert second.acquire_or_renew(now=later)  # the first stopped renewing: expired, taken over
    assert not first.acquire_or_renew(now=later)
    second.release()
    assert first.acquire_or_renew()  # released: free at once
    other_pool = LeaderLease(api_client, namespace, "pool-b", "operator-2")
    assert other_pool.acquire_or_renew()  # disjoint pools do not block each other
