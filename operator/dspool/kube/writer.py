"""Every API write the operator makes: DSD status, server-side apply, deletion of stale objects, events.

- **Fenced.** No write at all unless this process holds the Lease, renewed within the renew deadline,
  right now (:meth:`dspool.kube.lease.LeaderLease.leading`); the check runs before every call, mid-pass
  included.
- **Nothing unchanged is written.** An unchanged status is not patched, an object whose content was
  applied already in this term is not applied again, an event posted recently is not posted again.
- **No listing per DSD.** Objects a decision no longer wants are deleted by name from the ledger; the
  objects that existed before this term are listed once per kind (by dspool's label) when it starts.
- **Thread-safe**: a pass runs several writes at once (``dspool.loop``); discovery is looked up under a lock.
- Conflicts cannot happen on the writes dspool makes: status is a merge patch of dspool's own
  subresource and objects are server-side applied with ``force``; other failures are counted by verb,
  kind and code, and retried by the next pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from dspool import api
from dspool.ledger import NotLeadingError, ObjectKey, WriteLedger, digest, object_key, same_json
from dspool.metrics import OperatorMetrics
from dspool.reconcile import Event

log = logging.getLogger("dspool")

# Kinds dspool creates for a DSD; those the last decision no longer wants are deleted.
OBJECT_KINDS = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
]
FIELD_MANAGER = "dspool"
REQUEST_TIMEOUT = 30  # seconds; a hung API call must not stall every decision


def refusal(exc: ApiException) -> str | None:
    """Why the API server refused a write for good (invalid content), or None for a transient failure."""
    try:
        message = str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (TypeError, ValueError):
        message = str(exc.reason)
    if exc.status in (400, 422) or (exc.status == 500 and "duplicate entries" in message):
        return message[:500]  # 500: server-side apply of a list with repeated keys (e.g. env names)
    return None


class ApiWriter:
    """The operator's writes through one API client, behind the Lease's fence."""

    def __init__(
        self,
        api_client: client.ApiClient,
        leading: Callable[[], bool],
        metrics: OperatorMetrics,
        ledger: WriteLedger | None = None,
    ) -> None:
        self.api_client = api_client
        self.leading = leading
        self.metrics = metrics
        self.ledger = ledger if ledger is not None else WriteLedger()
        self._dynamic: DynamicClient | None = None  # created on first use (its discovery calls the API server)
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._resources: dict[tuple[str, str], Any] = {}
        self._discovery = threading.Lock()

    # ------------------------------------------------------------------ discovery

    def served(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves a kind."""
        try:
            self.resource(api_version, kind)
        except ResourceNotFoundError:
            return False
        return True

    def resource(self, api_version: str, kind: str) -> Any:
        """The dynamic client's resource for a kind, looked up in discovery once."""
        key = (api_version, kind)
        with self._discovery:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self.api_client)
                # The client caches discovery in a file shared by every process on the host: start from the
                # cluster as it is now (a CRD such as LWS may have been installed or removed since).
                self._dynamic.resources.invalidate_cache()
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def kinds_changed(self) -> None:
        """A CRD came or went: look kinds up again and apply everything with the new shape."""
        with self._discovery:
            if self._dynamic is not None:
                self._dynamic.resources.invalidate_cache()
            self._resources.clear()
        self.ledger.forget_objects()

    # ------------------------------------------------------------------ the fence

    def _counted(self, verb: str, kind: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Make one API write, counting failures by verb, kind and HTTP code; refused without the Lease."""
        if not self.leading():
            raise NotLeadingError(f"not leading: refusing to {verb} {kind}")
        self.metrics.api_requests.labels(verb, kind).inc()
        started = time.monotonic()
        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            self.metrics.write_errors.labels(verb, kind, str(exc.status)).inc()
            raise
        finally:
            self.metrics.api_request_seconds.labels(verb, kind).observe(time.monotonic() - started)

    # ------------------------------------------------------------------ status

    def write_status(self, namespace: str, name: str, status: dict[str, Any], old: Mapping[str, Any]) -> None:
        """Patch a DSD's status; nothing when it is unchanged."""
        if same_json(status, dict(old)):
            return
        # A merge patch replaces lists wholesale; fields we no longer set are cleared explicitly.
        patch = {key: None for key in old if key not in status} | status
        self._counted(
            "patch", api.KIND, self.custom.patch_namespaced_custom_object_status,
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}, _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip

    # ------------------------------------------------------------------ objects

    def seed(self, namespaces: Sequence[str]) -> None:
        """List dspool's existing objects once per kind (per watched namespace, or cluster-wide), so objects
        an earlier term or process created and no decision wants any more are found without listing per DSD."""
        found: dict[tuple[str, str], set[ObjectKey]] = {}
        selector = api.DEPLOYMENT_LABEL
        for api_version, kind in OBJECT_KINDS:
            try:
                resource = self.resource(api_version, kind)
            except ResourceNotFoundError:
                continue
            scopes: list[str | None] = list(namespaces) or [None]
            for namespace in scopes:
                self.metrics.api_requests.labels("list", kind).inc()
                try:
                    items = resource.get(
                        namespace=namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                    ).items
                except ApiException as exc:
                    if exc.status == 404:
                        continue  # the kind was uninstalled meanwhile (e.g. the LWS CRD)
                    raise
                for item in items:
                    label = str((item.metadata.labels or {}).get(api.DEPLOYMENT_LABEL))
                    key = (str(item.metadata.namespace), label)
                    found.setdefault(key, set()).add((api_version, kind, item.metadata.name))
        self.ledger.seed_found(found)

    def apply_object(self, uid: str, namespace: str, obj: dict[str, Any]) -> None:
        """Server-side apply one object a DSD wants; nothing when this content was applied in this term.
        An object the API server refuses for good is recorded in the ledger (the DSD's status says why) and
        not sent again until its content changes."""
        key, content = object_key(namespace, obj), digest(obj)
        if self.ledger.applied_unchanged(key, content):
            return
        resource = self.resource(obj["apiVersion"], obj["kind"])
        try:
            applied = self._counted(
                "apply", obj["kind"], resource.server_side_apply, body=obj, name=obj["metadata"]["name"],
                namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except ApiException as exc:
            why = refusal(exc)
            if why is None:
                raise
            self.ledger.record_rejected(uid, key, content, f"{obj['kind']} {obj['metadata']['name']}: {why}")
            log.warning("the API server refused %s %s/%s: %s", obj["kind"], namespace, obj["metadata"]["name"], why)
            return
        if getattr(getattr(applied, "metadata", None), "deletionTimestamp", None):
            return  # an object of the same name is still being deleted (e.g. LWS's): apply again later
        self.ledger.record_applied(key, content)
        self.ledger.record_owned(
            uid, namespace, str(obj["metadata"]["labels"].get(api.DEPLOYMENT_LABEL, "")), key[:2] + key[3:]
        )
        self.ledger.clear_rejected(uid, key)

    def delete_stale(self, uid: str, namespace: str, name: str, objects: Sequence[dict[str, Any]]) -> None:
        """Delete what a DSD's decision wanted before (or what was found for it) and no longer wants."""
        wanted = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in objects}
        stale = self.ledger.swap_wanted(uid, namespace, api.deployment_label_value(name), wanted)
        for api_version, kind, object_name in sorted(stale):
            self._delete(namespace, api_version, kind, object_name)

    def _delete(self, namespace: str, api_version: str, kind: str, name: str) -> None:
        try:
            resource = self.resource(api_version, kind)
        except ResourceNotFoundError:
            return  # the kind is gone (e.g. the LWS CRD removed): so are its objects
        with contextlib.suppress(ApiException):  # already gone (404); anything else is retried next term
            self._counted(
                "delete", kind, resource.delete, name=name, namespace=namespace,
                body={"propagationPolicy": "Background"}, _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        self.ledger.forget_applied((api_version, kind, namespace, name))

    # ------------------------------------------------------------------ events

    def post_events(self, metadata: Mapping[str, Any], events: Sequence[Event]) -> None:
        """Post events on a DSD; the same event at most once per repeat period."""
        uid = metadata["uid"]
        now = datetime.now(UTC)
        for event in events:
            if not self.ledger.should_post((uid, event.reason, event.message), time.monotonic()):
                continue
            self._counted(
                "create", "Event", self.core.create_namespaced_event, metadata["namespace"],
                client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name=f"{metadata['name']}."),
                    involved_object=client.V1ObjectReference(
                        api_version=api.API_VERSION, kind=api.KIND, name=metadata["name"],
                        namespace=metadata["namespace"], uid=uid,
                    ),
                    type=event.type, reason=event.reason, message=event.message[:1024], first_timestamp=now,
                    last_timestamp=now, count=1, source=client.V1EventSource(component="dspool"),
                ),
                _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
            self.metrics.events_posted.labels(event.type, event.reason).inc()
            log.info("%s/%s %s: %s", metadata["namespace"], metadata["name"], event.reason, event.message)
