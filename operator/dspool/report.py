"""What ``dspool pool`` prints: the pool at a glance, the same numbers the Pool dashboard shows.

Pure: a :class:`~dspool.inventory.Pool`, its reservations and the DSDs in, text or JSON out. Per type a
bar of used (``#``), reserved (``=``) and free (``.``) devices, whole free nodes and stranded devices;
then what fits now (further replicas of each catalog model, as ``dspool_pool_placeable_replicas``);
then, for small pools, every node with the replicas on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspool.catalog import Catalog, ModelSpec, UnknownIdError
from dspool.inventory import AcceleratorTotals, Pool, Reservation
from dspool.placement import fragmentation
from dspool.placement.fleet import ALL_TYPES, placeable_replicas, stranded_devices, whole_free_nodes

BAR_WIDTH = 32
NODE_LIST_LIMIT = 40


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def device_bar(totals: AcceleratorTotals, width: int = BAR_WIDTH) -> str:
    """``[##==....]``: used, reserved and free devices to scale (at least one mark for a non-zero count)."""
    if totals.allocatable == 0:
        return "[" + " " * width + "]"
    marks = []
    for count, mark in ((totals.used, "#"), (totals.reserved, "=")):
        marks.append(mark * (max(1, round(count * width / totals.allocatable)) if count else 0))
    filled = "".join(marks)[:width]
    return "[" + filled + "." * (width - len(filled)) + "]"


def demand_of(deployments: Sequence[Mapping[str, Any]], catalog: Catalog) -> list[ModelSpec]:
    """The models of these DSDs, each once, in first-seen order (unknown ids skipped)."""
    models: dict[str, ModelSpec] = {}
    for body in deployments:
        try:
            model = catalog.model(str((body.get("spec") or {}).get("model")))
        except UnknownIdError:
            continue
        models.setdefault(model.id, model)
    return list(models.values())


def pool_summary(
    pool: Pool, reservations: Sequence[Reservation], deployments: Sequence[Mapping[str, Any]], catalog: Catalog
) -> dict[str, Any]:
    """Every number of the report, JSON-ready (``dspool pool -o json``)."""
    demand = demand_of(deployments, catalog) or list(catalog.models)
    by_node: dict[str, list[str]] = {}
    for reservation in reservations:
        by_node.setdefault(reservation.node, []).append(
            f"{reservation.deployment}#{reservation.replica}({reservation.devices})"
        )
    return {
        "totals": {k: v.model_dump(mode="json") for k, v in pool.totals().items()},
        "fragmentation": fragmentation(pool),
        "wholeFreeNodes": whole_free_nodes(pool),
        "strandedDevices": stranded_devices(pool, demand, catalog),
        "placeableReplicas": placeable_replicas(pool, list(catalog.models), catalog),
        "nodes": [
            {
                **n.model_dump(
                    mode="json", include={"name", "accelerator", "allocatable", "used", "reserved", "fabric"}
                ),
                "free": n.free,
                "replicas": by_node.get(n.name, []),
            }
            for n in sorted(pool.nodes.values(), key=lambda n: n.name)
        ],
    }


def format_pool(summary: Mapping[str, Any], pool: Pool, show_nodes: bool | None = None) -> str:
    """The report as text: per-type bars, what fits now, and the nodes (small pools, or when asked)."""
    totals = pool.totals()
    rows = [
        [
            accelerator,
            str(t.nodes),
            str(t.allocatable),
            str(t.used),
            str(t.reserved),
            str(t.free),
            str(summary["wholeFreeNodes"].get(accelerator, 0)),
            str(summary["strandedDevices"].get(accelerator, 0)),
            f"{summary['fragmentation'].get(accelerator, 0.0):.2f}",
            device_bar(t),
        ]
        for accelerator, t in sorted(totals.items())
    ]
    header = ["ACCELERATOR", "NODES", "DEVICES", "USED", "RESERVED", "FREE", "WHOLE-FREE", "STRANDED", "FRAG",
              "USED # RESERVED = FREE ."]  # fmt: skip
    parts = [format_table(header, rows)]
    fits = []
    for model, per_type in summary["placeableReplicas"].items():
        where = ", ".join(
            f"{t} {n}" for t, n in sorted(per_type.items(), key=lambda i: (-i[1], i[0])) if t != ALL_TYPES and n
        )
        fits.append([model, str(per_type.get(ALL_TYPES, 0)), where or "-"])
    parts.append("WHAT FITS NOW (further replicas, default sizing)\n" + format_table(["MODEL", "FITS", "WHERE"], fits))
    if show_nodes or (show_nodes is None and len(pool.nodes) <= NODE_LIST_LIMIT):
        nodes = sorted(summary["nodes"], key=lambda n: (n["accelerator"], n["name"]))
        node_rows = [
            [n["name"], n["accelerator"], n["fabric"] or "-", str(n["allocatable"]), str(n["used"]), str(n["reserved"]),
             str(n["free"]), ", ".join(n["replicas"]) or "-"]
            for n in nodes
        ]  # fmt: skip
        parts.append(
            format_table(
                ["NODE", "ACCELERATOR", "FABRIC", "DEVICES", "USED", "RESERVED", "FREE", "REPLICAS"], node_rows
            )
        )
    return "\n\n".join(parts)
