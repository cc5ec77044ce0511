"""A light informer: list, then watch, one kind on its own thread, keeping only a compact view per object.

kopf's indexes cost minutes of start-up at 5,000 nodes (its per-object index machinery), and the
kubernetes client's model classes cost most of a list's time and memory. This informer reads the API's
JSON directly (``_preload_content=False``), pages through the first list, keeps what the pass needs
(:mod:`dspool.views`), and calls ``on_change`` only when a kept view really changed (node heartbeats do
not). It re-lists when the watch's resource version is too old (410 Gone) and retries on errors.

A view is replaced only when it changed (a re-list keeps the object of every view that did not), so the pass
may tell a change by identity. With ``journal=True`` the informer also records which keys changed since the
pass last took its views (:meth:`Informer.take`): the pool kept between passes (``dspool.inventory.live``)
applies those changes, on the pass's thread, instead of reading every view again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from dspool.kube import decode

log = logging.getLogger("dspool")

ListCall = Callable[..., Any]  # a generated list_* method of the kubernetes client
Compact = Callable[[dict[str, Any]], tuple[str, dict[str, Any] | None]]  # object -> (key, view or None: not kept)

PAGE_SIZE = 500
WATCH_SECONDS = 300  # the API server ends a watch after this long; the informer resumes it
RETRY_SECONDS = 2.0


class Gone(Exception):
    """The watch's resource version is too old: list again."""


class Informer:
    """Keeps ``{key: view}`` of one kind in step with the API server (thread-safe reads)."""

    def __init__(
        self, name: str, list_call: ListCall, compact: Compact, on_change: Callable[[], None], journal: bool = False
    ) -> None:
        self.name = name
        self.list_call = list_call
        self.compact = compact
        self.on_change = on_change
        self.decoder = decode.for_informer(name)  # nodes and pods: only the fields the views read
        self.synced = threading.Event()  # set once the first full list is in
        self._items: dict[str, dict[str, Any]] = {}
        # key -> its view now, or None (gone), for every key changed since the last take (None: no journal)
        self._changes: dict[str, dict[str, Any] | None] | None = {} if journal else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resource_version = ""
        self._thread = threading.Thread(target=self._run, name=f"dspool-watch-{name}", daemon=True)

    def start(self) -> None:
        """Start listing and watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching. The thread is a daemon: a watch blocked in a read does not hold the process up
        (closing its response from here would block until the server sends something)."""
        self._stop.set()

    def values(self) -> list[dict[str, Any]]:
        """A copy of the current views."""
        with self._lock:
            return list(self._items.values())

    def take(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
        """The current views and what changed since the last take (key -> view, None when gone), read at once:
        the changes turn the views of the last take into these. Without a journal, no changes."""
        with self._lock:
            changes = self._changes
            if changes is not None:
                self._changes = {}
            return list(self._items.values()), dict(changes or {})

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._resource_version:
                    self._list()
                self._watch()
            except Gone:
                self._resource_version = ""
            except Exception as exc:  # the API server restarting, a network error: try again shortly
                if self._stop.is_set():
                    return
                log.warning("watching %s failed (retrying): %s", self.name, _describe(exc))
                self._resource_version = ""  # list again: events may have been missed
                self._stop.wait(RETRY_SECONDS)

    def _list(self) -> None:
        fresh: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_preload_content": False, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            page = self.decoder.page(self.list_call(**kwargs).data)
            for item in page.get("items") or []:
                key, view = self.compact(item)
                if view is not None:
                    fresh[key] = view
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                self._resource_version = metadata.get("resourceVersion", "")
                break
        with self._lock:
            changed = self._keep_unchanged(fresh)
            self._items = fresh
        self.synced.set()
        if changed:
            self.on_change()

    def _keep_unchanged(self, fresh: dict[str, dict[str, Any]]) -> bool:
        """After a re-list: keep the old object of every view that did not change, journal the others and the
        keys gone; whether anything changed. Called under the lock."""
        changed = False
        for key, view in fresh.items():
            before = self._items.get(key)
            if before is not None and before == view:
                fresh[key] = before
            else:
                changed = True
                if self._changes is not None:
                    self._changes[key] = view
        for key in self._items.keys() - fresh.keys():
            changed = True
            if self._changes is not None:
                self._changes[key] = None
        return changed

    def _watch(self) -> None:
        response = self.list_call(
            watch=True, resource_version=self._resource_version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False, _request_timeout=WATCH_SECONDS + 30,
        )  # fmt: skip
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                event = self.decoder.event(line)
                self._handle(event.get("type", ""), event.get("object") or {})
        finally:
            response.release_conn()

    def _handle(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = version
        if kind == "BOOKMARK":
            return
        key, view = self.compact(obj)
        with self._lock:
            before = self._items.get(key)
            if kind == "DELETED" or view is None:
                self._items.pop(key, None)
                changed = before is not None
                view = None
            else:
                changed = before != view
                if changed:
                    self._items[key] = view  # an unchanged view keeps its object: the pass tells changes by identity
            if changed and self._changes is not None:
                self._changes[key] = view
        if changed:
            self.on_change()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
