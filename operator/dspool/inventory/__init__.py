"""The accelerator pool: plain device accounting (:mod:`.pool`, with its :mod:`.free_index`), the pool built
from what the watches hold (:mod:`.kubernetes`) and the pool kept between passes (:mod:`.live`). Imports
neither placement nor rebalancing."""

from dspool.inventory.free_index import FreeIndex
from dspool.inventory.kubernetes import (
    DEFAULT_FABRIC_LABEL,
    TERMINAL_PHASES,
    NodeCache,
    build_pool,
    hold_pods,
    is_pod_active,
    node_from_k8s,
    pod_device_requests,
    reservations_from_status,
)
from dspool.inventory.live import Booking, LivePool, WatchChanges, booked_reservations, pod_key
from dspool.inventory.pool import (
    NO_FABRIC,
    AcceleratorTotals,
    InsufficientDevicesError,
    NodeState,
    Pool,
    PoolChanges,
    PoolInvariantError,
    PoolListener,
    Reservation,
    devices_by_node,
)

__all__ = [
    "DEFAULT_FABRIC_LABEL",
    "NO_FABRIC",
    "TERMINAL_PHASES",
    "AcceleratorTotals",
    "Booking",
    "FreeIndex",
    "InsufficientDevicesError",
    "LivePool",
    "NodeCache",
    "NodeState",
    "Pool",
    "PoolChanges",
    "PoolInvariantError",
    "PoolListener",
    "Reservation",
    "WatchChanges",
    "booked_reservations",
    "build_pool",
    "devices_by_node",
    "hold_pods",
    "is_pod_active",
    "node_from_k8s",
    "pod_device_requests",
    "pod_key",
    "reservations_from_status",
]
