"""Placement: which accelerator type and which nodes each replica gets, and why (rules: docs/placement.md).

A pipeline, one module per step, lowest first:

- :mod:`.request`: what is asked (:class:`ReplicaRequest`, :class:`DemandMix`) and answered (:class:`Decision`);
- :mod:`.filters`: which nodes a request may use (nodeSelector, taints), one view per filter;
- :mod:`.scarcity`: what a placement costs the other models of the demand mix;
- :mod:`.candidates`: the request sized on each type, and the order types are tried in;
- :mod:`.choice`: nodes within one type (best fit, spread, gangs in one fabric) or what came closest;
- :mod:`.context`: the answers above that depend only on the node set, kept with the pool;
- :mod:`.explain`: every reason string;
- :mod:`.cost`: least-cost binpack over the types;
- :mod:`.engine`: :func:`place_replica` = filter -> size -> rank -> choose -> explain;
- :mod:`.fleet`: the pool as a whole (capacity, scale-down victims, fragmentation).

Pure and deterministic (ties broken by node, fabric and accelerator name); no API calls.
"""

from dspool.inventory import InsufficientDevicesError
from dspool.placement.candidates import TypeCandidate
from dspool.placement.engine import feasible_types, place_replica, place_replicas, release, reserve
from dspool.placement.filters import node_admits, tolerates
from dspool.placement.fleet import (
    ALL_TYPES,
    fragmentation,
    placeable_replicas,
    scale_down_victims,
    stranded_devices,
    whole_free_nodes,
)
from dspool.placement.request import Decision, DemandMix, ReplicaRequest, catalog_mix, placement_from_plan
from dspool.plancache import sized_plan

__all__ = [
    "ALL_TYPES",
    "Decision",
    "DemandMix",
    "InsufficientDevicesError",
    "ReplicaRequest",
    "TypeCandidate",
    "catalog_mix",
    "feasible_types",
    "fragmentation",
    "node_admits",
    "place_replica",
    "place_replicas",
    "placeable_replicas",
    "placement_from_plan",
    "release",
    "reserve",
    "scale_down_victims",
    "sized_plan",
    "stranded_devices",
    "tolerates",
    "whole_free_nodes",
]
