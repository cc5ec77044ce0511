"""Leader election on a real Lease, fenced: one holder at a time, expiry judged by observation, and a holder
that cannot renew stops counting as leader before anyone may take over."""

from __future__ import annotations

from kubernetes import client

from dspool.kube.lease import LeaderLease


class Clock:
    """A monotonic clock a test moves by hand (each operator has its own: no clock is shared)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_and_takeover_after_the_record_stops_changing_or_release(
    api_client: client.ApiClient, namespace: str
) -> None:
    first_clock, second_clock = Clock(), Clock()
    first = LeaderLease(api_client, namespace, "pool-a", "operator-1", duration_seconds=15, clock=first_clock)
    second = LeaderLease(api_client, namespace, "pool-a", "operator-2", duration_seconds=15, clock=second_clock)
    assert first.acquire_or_renew() and first.leading()
    assert not second.acquire_or_renew() and not second.leading()  # held and fresh
    second_clock.now += 14
    assert first.acquire_or_renew()  # the holder renews: the record changes
    assert not second.acquire_or_renew()  # second saw the change now: 15 s more to wait, whatever the timestamps
    second_clock.now += 16  # first stopped renewing; second has seen no change for 16 s
    assert second.acquire_or_renew() and second.leading()
    assert not first.acquire_or_renew() and not first.leading()
    second.release()
    assert first.acquire_or_renew()  # released: free at once
    other_pool = LeaderLease(api_client, namespace, "pool-b", "operator-2")
    assert other_pool.acquire_or_renew()  # disjoint pools do not block each other


def test_a_holder_that_cannot_renew_is_fenced_before_the_lease_can_be_taken(
    api_client: client.ApiClient, namespace: str
) -> None:
    clock = Clock()
    holder = LeaderLease(api_client, namespace, "fenced", "operator-1", duration_seconds=15, clock=clock)
    assert holder.acquire_or_renew() and holder.leading()
    clock.now += 9
    assert holder.leading()  # within the renew deadline (10 s of a 15 s lease)
    clock.now += 2
    assert not holder.leading()  # no renewal for 11 s: it stops writing, 4 s before a standby may take over
