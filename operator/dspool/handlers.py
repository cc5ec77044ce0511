"""kopf's handlers, and nothing else: start and stop the operator, follow the CRDs that change what dspool
builds. The operator's state is kopf's memo (an :class:`dspool.kube.runtime.OperatorRuntime`).

kopf runs the process (signals, the liveness endpoint, logging, login); nodes, pods, DSDs and PDBs are
watched by dspool's own light informers, which start in seconds at 5,000 nodes (see dspool.kube.informer).
No finalizers are added: DSDs can be deleted while the operator is down, and owner references
garbage-collect their workloads.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from typing import Any

import kopf

from dspool.kube.runtime import LWS_API, MINDCLUSTER_API, OperatorRuntime
from dspool.kubectl_conventions import quiet_connection_tracebacks
from dspool.settings import OperatorSettings
from dspool.workloads.mindie import MINDCLUSTER_CRD

LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
WATCHED_CRDS = {LWS_CRD: LWS_API, MINDCLUSTER_CRD: MINDCLUSTER_API}  # each changes what dspool builds


def _runtime(memo: Any) -> OperatorRuntime:
    runtime = getattr(memo, "runtime", None)
    if not isinstance(runtime, OperatorRuntime):
        raise RuntimeError("dspool operator not configured; start it with 'dspool run'")
    return runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Connect and start the watches, the Lease keeper and the loop; dspool posts its own events."""
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    await _runtime(memo).start()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate like the kubernetes client does (in-cluster or kubeconfig)."""
    return kopf.login_via_client(**kwargs)


def _watched_crd(name: str, **_: Any) -> bool:
    return name in WATCHED_CRDS


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_watched_crd)
async def crd_event(name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """LeaderWorkerSet or MindCluster installed or removed while running: picked up without a restart."""
    conditions = (body.get("status") or {}).get("conditions") or []
    established = type != "DELETED" and any(
        c.get("type") == "Established" and c.get("status") == "True" for c in conditions
    )
    runtime = _runtime(memo)
    if runtime.writer is not None:
        await asyncio.to_thread(runtime.kinds_changed, WATCHED_CRDS[name], established)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the loop and hand the Lease over at once."""
    await _runtime(memo).stop()


def run(settings: OperatorSettings) -> None:
    """Run the operator until interrupted (``dspool run``)."""
    level = settings.log_level
    kopf.configure(debug=level == "debug", quiet=level in ("warning", "error"), log_format=kopf.LogFormat.JSON)
    quiet_connection_tracebacks()  # an unreachable API server: one line per retry, no traceback
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck operator is waiting for
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if level == "error":
        logging.getLogger().setLevel(logging.ERROR)
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    memo = kopf.Memo(runtime=OperatorRuntime(settings))
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=liveness, memo=memo)
