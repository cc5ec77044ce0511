"""Every API write the operator makes: DSD status, server-side apply, deletion of stale objects, events.

- **Fenced.** No write at all unless this process holds the Lease, renewed within the renew deadline,
  right now (:meth:`dspool.kube.lease.LeaderLease.leading`); the check runs before every call, mid-pass
  included.
- **Nothing unchanged is written.** An unchanged status is not patched, an object whose content was
  applied already in this term is not applied again, an event posted recently is not posted again.
- **No listing per DSD.** Objects a decision no longer wants are deleted by name from the ledger; the
  objects that existed before this term are listed once per kind (by dspool's label) when it starts.
- **Thread-safe**: a pass runs several writes at once (``dspool.loop``). Every request has a timeout; the
  kinds dspool writes are fixed, so it needs no discovery.
- Conflicts cannot happen on the writes dspool makes: status is a merge patch of dspool's own
  subresource and objects are server-side applied with ``force``; other failures are counted by verb,
  kind and code, and retried by the next pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dspool import api
from dspool.ledger import NotLeadingError, ObjectKey, WriteLedger, digest, object_key, same_json
from dspool.metrics import OperatorMetrics
from dspool.reconcile import Event

log = logging.getLogger("dspool")

# Kinds dspool creates for a DSD (and their plural resource names); those the last decision no longer wants
# are deleted. Fixed kinds, so no discovery: its requests have no timeout in the kubernetes client.
PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
}
OBJECT_KINDS = list(PLURALS)
# Kinds that belong to the pool rather than to a DSD (the node model cache's fetch and evict Jobs): written and
# deleted by name, never seeded or deleted as a DSD's stale objects.
POOL_PLURALS = {("batch/v1", "Job"): "jobs"}
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


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a kind dspool builds: a collection (in a namespace or cluster-wide) or one object."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    plural = PLURALS.get((api_version, kind)) or POOL_PLURALS[(api_version, kind)]
    return f"{prefix}{scope}/{plural}" + (f"/{name}" if name else "")


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
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    # ------------------------------------------------------------------ kinds

    def served(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves a kind (one request, with a timeout)."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            response = self.api_client.call_api(
                prefix, "GET", header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                _preload_content=False, _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status in (404, 503):  # not installed, or an aggregated API not available
                return False
            raise
        resources = json.loads(response.data).get("resources") or []
        return any(r.get("kind") == kind and "/" not in r.get("name", "") for r in resources)

    def kinds_changed(self) -> None:
        """A CRD came or went: apply everything again, with the new shape."""
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

    def _request(self, method: str, path: str, body: Any = None, query: Sequence[tuple[str, str]] = (),
                 content_type: str = "application/json") -> dict[str, Any]:  # fmt: skip
        """One REST request with a timeout; the answer as JSON (every call here has a timeout: a hung
        request must not stall the operator)."""
        response = self.api_client.call_api(
            path, method, query_params=list(query), body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": content_type}, _preload_content=False,
            _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
        data = response.data
        return dict(json.loads(data)) if data else {}

    def seed(self, namespaces: Sequence[str]) -> None:
        """List dspool's existing objects once per kind (per watched namespace, or cluster-wide), so objects
        an earlier term or process created and no decision wants any more are found without listing per DSD."""
        found: dict[tuple[str, str], set[ObjectKey]] = {}
        for api_version, kind in OBJECT_KINDS:
            scopes: list[str | None] = list(namespaces) or [None]
            for namespace in scopes:
                self.metrics.api_requests.labels("list", kind).inc()
                try:
                    page = self._request("GET", object_path(api_version, kind, namespace),
                                         query=[("labelSelector", api.DEPLOYMENT_LABEL)])  # fmt: skip
                except ApiException as exc:
                    if exc.status == 404:
                        break  # the kind is not installed (e.g. the LWS CRD)
                    raise
                for item in page.get("items") or []:
                    metadata = item.get("metadata") or {}
                    label = str((metadata.get("labels") or {}).get(api.DEPLOYMENT_LABEL))
                    found.setdefault((str(metadata.get("namespace")), label), set()).add(
                        (api_version, kind, str(metadata.get("name")))
                    )
        self.ledger.seed_found(found)

    def apply_object(self, uid: str, namespace: str, obj: dict[str, Any]) -> None:
        """Server-side apply one object a DSD wants; nothing when this content was applied in this term.
        An object the API server refuses for good is recorded in the ledger (the DSD's status says why) and
        not sent again until its content changes."""
        key, content = object_key(namespace, obj), digest(obj)
        if self.ledger.applied_unchanged(key, content):
            return
        name = obj["metadata"]["name"]
        path = object_path(obj["apiVersion"], obj["kind"], namespace, name)
        try:
            applied = self._counted(
                "apply", obj["kind"], self._request, "PATCH", path,
                body=obj, query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                content_type="application/apply-patch+yaml",
            )  # fmt: skip
        except ApiException as exc:
            why = refusal(exc)
            if why is None:
                raise
            self.ledger.record_rejected(uid, key, content, f"{obj['kind']} {name}: {why}")
            log.warning("the API server refused %s %s/%s: %s", obj["kind"], namespace, name, why)
            return
        if (applied.get("metadata") or {}).get("deletionTimestamp"):
            return  # an object of the same name is still being deleted (e.g. LWS's): apply again later
        self.ledger.record_applied(key, content)
        label = str((obj["metadata"].get("labels") or {}).get(api.DEPLOYMENT_LABEL, ""))
        self.ledger.record_owned(uid, namespace, label, (obj["apiVersion"], obj["kind"], name))
        self.ledger.clear_rejected(uid, key)

    def delete_stale(self, uid: str, namespace: str, name: str, objects: Sequence[dict[str, Any]]) -> None:
        """Delete what a DSD's decision wanted before (or what was found for it) and no longer wants."""
        wanted = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in objects}
        stale = self.ledger.swap_wanted(uid, namespace, api.deployment_label_value(name), wanted)
        for api_version, kind, object_name in sorted(stale):
            self._delete(namespace, api_version, kind, object_name)

    def annotate(self, namespace: str, api_version: str, kind: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto one object (the model cache's last-used times); gone already is fine."""
        with contextlib.suppress(ApiException):
            self._counted(
                "patch", kind, self._request, "PATCH", object_path(api_version, kind, namespace, name),
                body={"metadata": {"annotations": annotations}}, content_type="application/merge-patch+json",
            )  # fmt: skip

    def delete_object(self, namespace: str, api_version: str, kind: str, name: str) -> None:
        """Delete one object (the node model cache's Jobs); already gone is fine."""
        self._delete(namespace, api_version, kind, name)

    def _delete(self, namespace: str, api_version: str, kind: str, name: str) -> None:
        # Already gone (404, or the kind itself, e.g. the LWS CRD removed); anything else: retried next term.
        with contextlib.suppress(ApiException):
            self._counted(
                "delete", kind, self._request, "DELETE", object_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
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
