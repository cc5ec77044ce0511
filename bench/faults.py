"""The fault suite, long form: many seeded randomized runs against dspool on the local control plane.

    python bench/faults.py --runs 200            # the long run (needs `make cluster-up`)
    python bench/faults.py --runs 1 --first 17   # run 17 again (same seed, same steps; not the same timing)

Each run (e2e/faultsuite.py): a fresh namespace and 8-node fake pool, `dspool run`, a random sequence of DSD
creates, scales, deletes and node losses with kill -9 of the operator, kube-apiserver restarts and a second
operator racing for the Lease; then the DSDs must settle and the invariants hold. Prints one line per run, then
the runs x faults x violations table, and every violation with its run and seed. Exit status 1 when any
invariant was violated. ``--report FILE`` also writes that output, rewritten after every run; ``--results FILE``
appends one JSON line per run and, when started again with the same file, skips the runs it already holds (a
long series survives an interruption) and tables them all.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
import faultsuite
from dspool.sim.apply import install_crd


def main() -> int:
    """Run the suite and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--first", type=int, default=0, help="index of the first run (seeds follow the index)")
    parser.add_argument("--seed", type=int, default=11, help="base seed: run i uses seed * 1000 + i")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 7-12, seeded)")
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--report", type=Path, default=None, help="also write the output here after every run")
    parser.add_argument("--results", type=Path, default=None, help="JSON lines, one per run; resumes from it")
    parser.add_argument("--logs", type=Path, default=None, help="keep operator logs here (default: a temp dir)")
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step")
    args = parser.parse_args()

    api_client, kubeconfig = faultsuite.connect(args.kubeconfig)
    install_crd(api_client)
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="dspool-faults-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[faultsuite.RunResult] = []
    if args.results and args.results.exists():
        records = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        results = [faultsuite.RunResult.from_json(r) for r in records]
    done = {r.index for r in results}
    lines: list[str] = [
        f"fault suite: {args.runs} runs from index {args.first}, base seed {args.seed}, logs in {log_dir}"
    ]
    print(lines[0], flush=True)
    started = time.monotonic()
    for index in range(args.first, args.first + args.runs):
        if index in done:
            continue
        run = faultsuite.FaultRun(
            api_client, kubeconfig, index, args.seed * 1000 + index, log_dir, steps=args.steps,
            settle_timeout=args.settle_timeout, log=print if args.verbose else lambda _: None,
        )  # fmt: skip
        result = run.run()
        results.append(result)
        if args.results:
            with args.results.open("a") as handle:
                handle.write(json.dumps(result.to_json()) + "\n")
        lines.append(faultsuite.run_line(result))
        print(lines[-1], flush=True)
        for violation in result.violations:
            lines.append(f"    {violation.invariant}: {violation.detail}")
            print(lines[-1], flush=True)
        if args.report:
            args.report.write_text("\n".join([*lines, "", report_tail(results, time.monotonic() - started)]) + "\n")
    tail = report_tail(results, time.monotonic() - started)
    print()
    print(tail)
    if args.report:
        args.report.write_text("\n".join([*lines, "", tail]) + "\n")
    return 1 if any(r.violations or r.harness_error for r in results) else 0


def report_tail(results: list[faultsuite.RunResult], seconds: float) -> str:
    """The table and the totals."""
    violations = sum(len(r.violations) for r in results)
    run_seconds = sum(r.seconds for r in results)
    return (
        f"{faultsuite.summary_table(results)}\n\n"
        f"{len(results)} runs, {run_seconds / 60:.1f} min of runs ({run_seconds / max(1, len(results)):.0f} s a run; "
        f"this invocation {seconds / 60:.1f} min); {violations} violation(s) in "
        f"{sum(1 for r in results if r.violations)} run(s); "
        f"{sum(1 for r in results if r.harness_error)} harness error(s)"
    )


if __name__ == "__main__":
    sys.exit(main())
