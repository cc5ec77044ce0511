"""``dspool cache``: every node's model cache as a table or JSON."""

from __future__ import annotations

from typing import Any

from dspool.weights.entries import GIB
from dspool.weights.state import CacheView, EntryState


def cache_rows(view: CacheView) -> list[dict[str, Any]]:
    """One row per (node, entry), by node then entry: state, size, bytes done, why, last used, and the
    node's cache use and capacity."""
    rows = []
    for node in sorted(view.nodes):
        cache = view.nodes[node]
        for entry_id in sorted(cache.entries):
            entry = cache.entries[entry_id]
            done = entry.size_bytes if entry.state == EntryState.READY else entry.bytes_done
            rows.append(
                {
                    "node": node,
                    "entry": entry_id,
                    "state": entry.state.value,
                    "sizeGiB": round(entry.size_bytes / GIB, 1),
                    "doneGiB": round(done / GIB, 1),
                    "reason": entry.reason,
                    "lastUsed": entry.last_used.isoformat() if entry.last_used else None,
                    "nodeUsedGiB": round(cache.used_bytes / GIB, 1),
                    "nodeCapacityGiB": round(cache.capacity_bytes / GIB, 1),
                }
            )
    return rows


def format_cache(rows: list[dict[str, Any]]) -> str:
    """The rows as kubectl-style columns."""
    if not rows:
        return "no model cache entries (is the operator running with --model-cache?)"
    header = ("NODE", "ENTRY", "STATE", "SIZE", "DONE", "NODE USE", "REASON")
    table = [header] + [
        (
            r["node"], r["entry"], r["state"], f"{r['sizeGiB']:.0f}Gi", f"{r['doneGiB']:.0f}Gi",
            f"{r['nodeUsedGiB']:.0f}/{r['nodeCapacityGiB']:.0f}Gi", r["reason"] or "-",
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "   ".join(str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "   " + row[-1]
        for row in table
    )
