"""`dspool pool`'s picture: bars to scale and what fits now, from the same numbers as the metrics."""

from __future__ import annotations

from test_placement import CATALOG, node, pool_of

from dspool.inventory import AcceleratorTotals
from dspool.report import device_bar, format_pool, pool_summary


def test_bars_show_used_reserved_and_free_to_scale() -> None:
    assert device_bar(AcceleratorTotals(nodes=4, allocatable=32, used=8, reserved=8, free=16), width=8) == "[##==....]"
    assert device_bar(AcceleratorTotals(nodes=1, allocatable=64, used=1, free=63), width=8) == "[#.......]"  # seen


def test_the_report_says_what_fits_now_per_model_and_where() -> None:
    pool = pool_of(node("h200-0", "H200-141G"), node("h200-1", "H200-141G", used=8), node("l20-0", "L20-48G", used=4))
    dsds = [{"spec": {"model": "deepseek-r1-distill-llama-70b"}}]
    summary = pool_summary(pool, [], dsds, CATALOG)
    text = format_pool(summary, pool)
    assert "H200-141G    2      16       8     0         8     1           0" in text
    assert "deepseek-r1                    1     H200-141G 1" in text
    # the 70B fits once on the half-free L20 (4 devices) and once on the free H200 (2 x 140 GiB)
    line = next(line for line in text.splitlines() if line.startswith("deepseek-r1-distill-llama-70b"))
    assert line.split()[1] == str(summary["placeableReplicas"]["deepseek-r1-distill-llama-70b"]["all"])
    assert summary["strandedDevices"]["L20-48G"] == 0  # the demand mix (the 70B, 4 per node) uses the 4 free
