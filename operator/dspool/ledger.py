"""What this operator wrote in its current term: one ledger, shared by the pass and the writer.

- **Placements written, until the watch echoes them.** A status patch reaches the DSD index a moment
  later; until then the pass counts what it wrote, so a lagging watch can never free booked devices.
- **Objects applied** (a content hash per object), so an unchanged object is not applied again, and
  **objects wanted per DSD**, so those a decision no longer wants are deleted by name, without listing.
- **Events posted**, so the same event is not posted again within ``EVENT_REPEAT_SECONDS``.

Writes run on several threads at once: every method takes the ledger's lock. On gaining the Lease the
ledger is cleared: another holder may have written since, and only the cluster counts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any

EVENT_REPEAT_SECONDS = 600.0  # the same event is posted again after this long

ObjectKey = tuple[str, str, str]  # (apiVersion, kind, name) in the DSD's namespace


class NotLeadingError(RuntimeError):
    """A write was attempted without holding the Lease (the fence)."""


def booking(status: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The part of a status that books devices: placements, and the moves that say which are new copies."""
    return {"placements": list(status.get("placements") or []), "moves": list(status.get("moves") or [])}


def digest(obj: Mapping[str, Any]) -> str:
    """A content hash of an object as dspool builds it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def object_key(namespace: str, obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name) of an object dspool builds."""
    return (obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"])


def same_json(new: Any, old: Any) -> bool:
    """Whether two JSON-like values are equal as the API server would store them."""
    return json.dumps(new, sort_keys=True, default=str) == json.dumps(old, sort_keys=True, default=str)


class WriteLedger:
    """The operator's memory of its own writes in the current term (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._placements: dict[str, dict[str, list[dict[str, Any]]]] = {}  # uid -> booking written
        self._applied: dict[tuple[str, str, str, str], str] = {}  # (apiVersion, kind, ns, name) -> hash
        self._wanted: dict[str, set[ObjectKey]] = {}  # uid -> objects its last decision wanted
        self._found: dict[tuple[str, str], set[ObjectKey]] = {}  # (ns, DSD label) -> objects listed at term start
        self._events: dict[tuple[str, str, str], float] = {}  # (uid, reason, message) -> when posted
        # uid -> object -> (content hash, why): objects the API server refused; not sent again unchanged
        self._rejected: dict[str, dict[tuple[str, str, str, str], tuple[str, str]]] = {}
        self.seeded = False  # whether existing objects were listed in this term
        self.generation = 0  # counts forget_objects: decisions remembered from before must be made again

    # ----------------------------------------------------------------- placements

    def record_booking(self, uid: str, status: Mapping[str, Any]) -> None:
        """A status write succeeded: count its booking until the watch echoes it."""
        with self._lock:
            self._placements[uid] = booking(status)

    def booking_of(self, uid: str, stored: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """The booking that counts for a DSD: what we wrote, until the stored status equals it."""
        stored_booking = booking(stored)
        with self._lock:
            written = self._placements.get(uid)
            if written is None:
                return stored_booking
            if written == stored_booking:
                del self._placements[uid]  # the watch caught up: the cluster is the truth again
                return stored_booking
            return written

    def unechoed(self, uid: str) -> dict[str, list[dict[str, Any]]] | None:
        """What we wrote for a DSD that the watch has not echoed yet, if anything."""
        with self._lock:
            return self._placements.get(uid)

    # ----------------------------------------------------------------- objects

    def applied_unchanged(self, key: tuple[str, str, str, str], digest: str) -> bool:
        """Whether this exact object content was applied already in this term."""
        with self._lock:
            return self._applied.get(key) == digest

    def record_applied(self, key: tuple[str, str, str, str], digest: str) -> None:
        """An object was applied."""
        with self._lock:
            self._applied[key] = digest

    def forget_applied(self, key: tuple[str, str, str, str]) -> None:
        """An object was deleted: apply it again should a decision want it back."""
        with self._lock:
            self._applied.pop(key, None)

    def seed_found(self, found: Mapping[tuple[str, str], set[ObjectKey]]) -> None:
        """The objects labelled as dspool's that exist at the start of a term (listed once per kind)."""
        with self._lock:
            self._found = {key: set(value) for key, value in found.items()}
            self.seeded = True

    def record_owned(self, uid: str, namespace: str, label: str, obj: ObjectKey) -> None:
        """An object of a DSD exists now (it was applied): a later sweep deletes it once no decision wants it,
        even when the sweep that would have recorded it as wanted did not run in between."""
        with self._lock:
            owned = self._wanted.get(uid)
            if owned is None:
                owned = self._wanted[uid] = self._found.pop((namespace, label), set())
            owned.add(obj)

    def swap_wanted(self, uid: str, namespace: str, label: str, wanted: set[ObjectKey]) -> set[ObjectKey]:
        """Record what a DSD's decision wants now; return the objects it wanted before (or that were found
        for it at term start) and wants no more: those to delete."""
        with self._lock:
            before = self._wanted.get(uid)
            if before is None:
                before = self._found.pop((namespace, label), set())
            self._wanted[uid] = set(wanted)
            return before - wanted

    def record_rejected(self, uid: str, key: tuple[str, str, str, str], digest: str, why: str) -> None:
        """The API server refused this content of an object for good (invalid, not a transient error)."""
        with self._lock:
            self._rejected.setdefault(uid, {})[key] = (digest, why)

    def clear_rejected(self, uid: str, key: tuple[str, str, str, str]) -> None:
        """The object was applied: whatever was refused before is history."""
        with self._lock:
            refused = self._rejected.get(uid)
            if refused is not None:
                refused.pop(key, None)
                if not refused:
                    del self._rejected[uid]

    def is_rejected(self, uid: str, key: tuple[str, str, str, str], digest: str) -> bool:
        """Whether exactly this content was refused already (sending it again would be refused again)."""
        with self._lock:
            entry = self._rejected.get(uid, {}).get(key)
            return entry is not None and entry[0] == digest

    def rejections(self, uid: str) -> list[str]:
        """Why the API server refused a DSD's objects, one line per object."""
        with self._lock:
            return [why for _, why in sorted(self._rejected.get(uid, {}).values(), key=lambda e: e[1])]

    def wants(self, uid: str, wanted: Collection[ObjectKey]) -> bool:
        """Whether the last stale-object sweep of a DSD was for exactly these objects (it has happened)."""
        with self._lock:
            return self._wanted.get(uid) == set(wanted)

    # ----------------------------------------------------------------- events

    def should_post(self, key: tuple[str, str, str], now: float) -> bool:
        """Whether an event is new (or last posted long enough ago); if so it counts as posted now."""
        with self._lock:
            if now - self._events.get(key, now - EVENT_REPEAT_SECONDS) < EVENT_REPEAT_SECONDS:
                return False
            self._events[key] = now
            return True

    # ----------------------------------------------------------------- life cycle

    def forget_deleted(self, live_uids: Iterable[str]) -> None:
        """Drop what belongs to DSDs that no longer exist (their objects go with their owner)."""
        live = set(live_uids)
        with self._lock:
            for uid in [u for u in self._placements if u not in live]:
                del self._placements[uid]
            for uid in [u for u in self._wanted if u not in live]:
                del self._wanted[uid]
            for key in [k for k in self._events if k[0] not in live]:
                del self._events[key]
            for uid in [u for u in self._rejected if u not in live]:
                del self._rejected[uid]

    def forget_objects(self) -> None:
        """Apply every object again and list what exists once more (the periodic re-apply, a CRD change)."""
        with self._lock:
            self._applied.clear()
            self._wanted.clear()
            self._found.clear()
            self.seeded = False
            self.generation += 1

    def new_term(self) -> None:
        """On gaining the Lease: forget everything an earlier term wrote."""
        self.forget_objects()
        with self._lock:
            self._placements.clear()
            self._events.clear()
            self._rejected.clear()
