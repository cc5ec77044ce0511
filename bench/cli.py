"""How long `dspool plan` takes, as a user runs it, next to a bare Python start (ratios; noisy machine).

    python bench/cli.py [--runs 15]

Prints the median and worst wall time of `python -c pass`, `dspool plan deepseek-r1` (one row per
accelerator) and `dspool plan --all` (every model x accelerator), and how many plans per second the
planner itself computes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from dspool.catalog import builtin_catalog
from dspool.sizing import plan


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Wall time of each of ``runs`` runs of a command."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    """Run the measurements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "dspool plan deepseek-r1": [sys.executable, "-m", "dspool", "plan", "deepseek-r1"],
        "dspool plan --all": [sys.executable, "-m", "dspool", "plan", "--all"],
    }
    rows = {name: wall_times(argv, args.runs) for name, argv in commands.items()}
    baseline = statistics.median(rows["python -c pass"])
    print(f"{'command':<26} {'median s':>9} {'max s':>7} {'x python start':>15}")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:<26} {median:>9.3f} {max(times):>7.3f} {median / baseline:>15.1f}")
    catalog = builtin_catalog()
    pairs = [(m, a) for m in catalog.models for a in catalog.accelerators]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for model, accelerator in pairs:
            plan(model, accelerator)
    elapsed = time.perf_counter() - started
    print(f"\nplanner: {rounds * len(pairs) / elapsed:,.0f} plans per second ({len(pairs)} model x accelerator pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
