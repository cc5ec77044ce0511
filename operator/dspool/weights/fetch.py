"""The fetch: one cache entry onto one node, run inside a fetch Job pinned to that node.

    python -m dspool.weights.fetch --source URI --cache-dir DIR --entry ENTRY_ID [--revision REV]
        [--expected-bytes N] [--parallel 4] [--max-mbps M] [--s3-endpoint URL]

Files go to ``DIR/.partial/ENTRY_ID/``; a journal there lists the files already verified, so a fetch killed
(even with SIGKILL) and started again fetches only what is missing and resumes a half-written file with an HTTP
``Range`` request. Only when every file is there and verified does it write the entry's marker and rename the
directory to ``DIR/ENTRY_ID`` (one rename on one filesystem: an entry is complete or absent). An entry whose
marker exists is a success without any work.

Sources: ``https://.../x.json`` (a manifest, :mod:`.fetch_manifest`), ``https://.../x.tar[.gz]`` (a tarball,
:mod:`.fetch_tar`), ``s3://bucket/prefix`` (:mod:`.fetch_s3`), ``hf://org/repo`` (:mod:`.fetch_hf`).
Standard library only, so that the operator image is the fetch image. docs/weights.md, "The fetch".
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dspool.weights.fetch_common import (
    ARCHIVE_DIR,
    CONTROL_NAMES,
    ENTRY_MARKER,
    JOURNAL_FILE,
    PART_SUFFIX,
    PARTIAL_DIR,
    PROGRESS_FILE,
    ExitCode,
    FetchError,
    RemoteFile,
    check_entry_id,
    human_bytes,
)
from dspool.weights.fetch_http import Progress, Throttle, Transfer, download_file
from dspool.weights.fetch_sources import SourcePlan, plan_source
from dspool.weights.fetch_tar import extract

TERMINATION_LOG = "/dev/termination-log"
Log = Callable[[str], None]


@dataclass
class FetchOptions:
    """What one fetch is asked to do (the command line's options)."""

    source: str
    cache_dir: Path
    entry: str
    revision: str = ""
    expected_bytes: int = 0
    parallel: int = 4
    max_mbps: float = 0.0  # megabits per second over the whole fetch; 0 = no cap
    s3_endpoint: str = ""
    progress_interval_s: float = 5.0
    retries: int = 5
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class FetchResult:
    """A finished entry."""

    entry_dir: Path
    total_bytes: int
    files: int
    fetched_bytes: int  # bytes that came over the network in this run
    seconds: float
    already_present: bool = False


class Journal:
    """The files of a partial entry already verified: one JSON line each, appended and synced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill: that file is checked again
                if isinstance(record, dict) and isinstance(record.get("path"), str):
                    self.records[record["path"]] = record

    def record(self, entry: dict[str, Any]) -> None:
        """Add one verified file."""
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            self.records[entry["path"]] = entry

    def holds(self, remote: RemoteFile, partial: Path) -> bool:
        """Whether ``remote`` is already in the partial entry, verified, as the source describes it now."""
        found = self.records.get(remote.path)
        on_disk = partial / remote.path
        return (
            found is not None
            and on_disk.is_file()
            and on_disk.stat().st_size == found.get("size")
            and (remote.size is None or remote.size == found.get("size"))
            and (remote.sha256 is None or remote.sha256 == found.get("sha256"))
        )


def _bytes_under(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0


def check_disk(cache_dir: Path, needed: int, present: int) -> None:
    """FetchError(DISK), with the numbers, when the filesystem of ``cache_dir`` lacks the bytes still to write."""
    missing = max(0, needed - present)
    free = shutil.disk_usage(cache_dir).free
    if missing > free:
        raise FetchError(
            ExitCode.DISK,
            f"not enough disk in {cache_dir}: {human_bytes(missing)} still to write "
            f"({human_bytes(needed)} in all, {human_bytes(present)} already there), {human_bytes(free)} free",
        )


@contextmanager
def entry_lock(partial_root: Path, entry: str) -> Iterator[None]:
    """One fetch per entry per node: a second one (a Job's retry while its first pod still runs) fails BUSY.
    The kernel releases the lock when the holder dies, even by SIGKILL."""
    with (partial_root / f"{entry}.lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise FetchError(ExitCode.BUSY, f"another fetch of {entry} is running on this node") from error
        yield


class Reporter:
    """Every few seconds: ``.progress.json`` in the partial directory and one log line."""

    def __init__(self, options: FetchOptions, partial: Path, progress: Progress, log: Log) -> None:
        self.options, self.partial, self.progress, self.log = options, partial, progress, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetch-progress", daemon=True)
        self._last = (time.monotonic(), 0)

    def __enter__(self) -> Reporter:
        self._last = (time.monotonic(), self.progress.done_bytes)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.options.progress_interval_s):
            try:
                self.report()
            except OSError as error:  # a full disk must fail the downloads, not silence the reporter
                self.log(f"fetch {self.options.entry}: cannot write progress: {error}")

    def report(self) -> None:
        """Write the progress file and log one line."""
        now, done, total = time.monotonic(), self.progress.done_bytes, self.progress.total_bytes
        rate = max(0.0, (done - self._last[1]) / max(now - self._last[0], 1e-6))
        self._last = (now, done)
        state = {
            "entry": self.options.entry,
            "source": self.options.source,
            "bytes_done": done,
            "bytes_total": total,
            "files_done": self.progress.files_done,
            "files_total": self.progress.files_total,
            "bytes_per_second": round(rate),
            "eta_seconds": round((total - done) / rate) if rate > 0 and total >= done else None,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        temporary = self.partial / f"{PROGRESS_FILE}.tmp"
        temporary.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.partial / PROGRESS_FILE)
        share = f" ({100 * done / total:.1f}%)" if total else ""
        self.log(
            f"fetch {self.options.entry}: {human_bytes(done)} of {human_bytes(total)}{share}, "
            f"{rate * 8 / 1e6:.0f} Mbit/s, {self.progress.files_done}/{self.progress.files_total} files"
        )


def _fetch_one(remote: RemoteFile, partial: Path, journal: Journal, transfer: Transfer) -> None:
    """One file into the partial entry: skipped when the journal holds it, else downloaded (resumed),
    verified, renamed to its name and journaled."""
    target = partial / remote.path
    if journal.holds(remote, partial):
        transfer.progress.add(target.stat().st_size)
        transfer.progress.file_done()
        return
    part = target.with_name(target.name + PART_SUFFIX)
    if target.is_file() and not part.exists():
        os.replace(target, part)  # renamed but not journaled before a kill: verified again, from disk
    sha256 = download_file(remote, part, transfer)
    os.replace(part, target)
    verified = "sha256" if remote.sha256 else "git-blob-sha1" if remote.git_blob_sha1 else "size"
    journal.record({"path": remote.path, "size": target.stat().st_size, "sha256": sha256, "verified": verified})
    transfer.progress.file_done()


def _fetch_all(files: Sequence[RemoteFile], partial: Path, journal: Journal, transfer: Transfer, parallel: int) -> None:
    """Every file, ``parallel`` at a time; the first failure cancels the rest and is raised."""
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="fetch") as pool:
        futures = [pool.submit(_fetch_one, remote, partial, journal, transfer) for remote in files]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            transfer.stop.set()
            for future in futures:
                future.cancel()
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    first = next((e for e in errors if not (isinstance(e, FetchError) and e.code == ExitCode.CANCELLED)), None)
    if first is not None:
        raise first


def _clear_extracted(partial: Path) -> None:
    """Remove what an interrupted extraction left (the archive and the fetch's own files stay)."""
    for child in partial.iterdir():
        if child.name in CONTROL_NAMES or child.name.startswith(PROGRESS_FILE):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _fetch_tarball(plan: SourcePlan, partial: Path, journal: Journal, transfer: Transfer, log: Log) -> list[Any]:
    """Download the archive (resumable, verified), then extract it afresh; returns the marker's file list."""
    archive = plan.files[0]
    _fetch_all([archive], partial, journal, transfer, 1)
    log(f"extracting {archive.path.split('/')[-1]}")
    _clear_extracted(partial)
    members = extract(partial / archive.path, partial, transfer.stop)
    return [{"path": path, "size": size, "verified": "tarball"} for path, size in members]


def _marker_files(plan: SourcePlan, journal: Journal) -> list[dict[str, Any]]:
    return [{k: journal.records[f.path][k] for k in ("path", "size", "sha256", "verified")} for f in plan.files]


def _write_marker(options: FetchOptions, plan: SourcePlan, partial: Path, files: list[dict[str, Any]]) -> None:
    """The marker, written (and synced) only once every file is verified."""
    marker = {
        "entry": options.entry,
        "source": options.source,
        "revision": options.revision,
        "resolved_revision": plan.resolved_revision,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with (partial / ENTRY_MARKER).open("w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _move_into_place(options: FetchOptions, partial: Path) -> Path:
    """Drop the fetch's own files from a partial entry that holds its marker, and rename it into place. A kill
    anywhere in here leaves the marker in the partial entry, and the next run starts here again."""
    for name in (PROGRESS_FILE, f"{PROGRESS_FILE}.tmp", JOURNAL_FILE):
        (partial / name).unlink(missing_ok=True)
    shutil.rmtree(partial / ARCHIVE_DIR, ignore_errors=True)
    final = options.cache_dir / options.entry
    if final.exists():  # a directory without a marker (a wiped or hand-made entry): replaced
        shutil.rmtree(final)
    os.rename(partial, final)
    directory = os.open(options.cache_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return final


def _transfer(options: FetchOptions, plan: SourcePlan) -> Transfer:
    cap = options.max_mbps * 1e6 / 8 if options.max_mbps > 0 else None
    return Transfer(plan.origin, Throttle(cap), Progress(), threading.Event(), options.retries)


def _run_locked(options: FetchOptions, partial: Path, log: Log, started: float) -> FetchResult:
    if (partial / ENTRY_MARKER).is_file():  # verified, then killed before the rename
        final = _move_into_place(options, partial)
        marker = json.loads((final / ENTRY_MARKER).read_text(encoding="utf-8"))
        return FetchResult(final, marker["total_bytes"], len(marker["files"]), 0, time.monotonic() - started)
    check_disk(options.cache_dir, options.expected_bytes, _bytes_under(partial))
    plan = plan_source(options.source, options.revision, options.s3_endpoint, options.env)
    check_disk(options.cache_dir, plan.needed_bytes(options.expected_bytes), _bytes_under(partial))
    journal = Journal(partial / JOURNAL_FILE)
    transfer = _transfer(options, plan)
    transfer.progress.total_bytes = plan.total_bytes() or options.expected_bytes
    transfer.progress.files_total = len(plan.files)
    log(f"fetching {options.source} into {options.entry}: {len(plan.files)} files, {human_bytes(plan.total_bytes())}")
    with Reporter(options, partial, transfer.progress, log) as reporter:
        on_disk = _bytes_under(partial)
        if plan.tarball:
            files = _fetch_tarball(plan, partial, journal, transfer, log)
        else:
            _fetch_all(plan.files, partial, journal, transfer, options.parallel)
            files = _marker_files(plan, journal)
        reporter.report()
    fetched = max(0, transfer.progress.done_bytes - on_disk)
    _write_marker(options, plan, partial, files)
    final = _move_into_place(options, partial)
    total = sum(f["size"] for f in files)
    return FetchResult(final, total, len(files), fetched, time.monotonic() - started)


def fetch(options: FetchOptions, log: Log = print) -> FetchResult:
    """Fetch one entry (see the module's docstring); FetchError with a one-line reason when it cannot."""
    started = time.monotonic()
    entry = check_entry_id(options.entry)
    final = options.cache_dir / entry
    if (final / ENTRY_MARKER).is_file():
        return FetchResult(final, _bytes_under(final), 0, 0, 0.0, already_present=True)
    partial_root = options.cache_dir / PARTIAL_DIR
    partial = partial_root / entry
    partial.mkdir(parents=True, exist_ok=True)
    with entry_lock(partial_root, entry):
        if (final / ENTRY_MARKER).is_file():  # finished by another fetch while this one waited
            shutil.rmtree(partial, ignore_errors=True)
            return FetchResult(final, _bytes_under(final), 0, 0, 0.0, already_present=True)
        partial.mkdir(parents=True, exist_ok=True)
        return _run_locked(options, partial, log, started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dspool.weights.fetch", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="hf://org/repo, s3://bucket/prefix, https://.../x.json|.tar.gz")
    parser.add_argument("--cache-dir", required=True, type=Path, help="the node's model cache directory")
    parser.add_argument("--entry", required=True, help="the entry id (its directory name)")
    parser.add_argument("--revision", default="", help="the hub revision (branch, tag or commit); default main")
    parser.add_argument("--expected-bytes", type=int, default=0, help="expected size, for the early disk check")
    parser.add_argument("--parallel", type=int, default=4, help="files downloaded at a time (default 4)")
    parser.add_argument("--max-mbps", type=float, default=0.0, help="bandwidth cap in megabits/s (default none)")
    parser.add_argument("--s3-endpoint", default="", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)")
    parser.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress reports")
    parser.add_argument("--retries", type=int, default=5, help="retries per request on transient errors")
    parser.add_argument("--termination-log", default=TERMINATION_LOG, help="where the failure reason goes")
    return parser


def _report_failure(reason: str, termination_log: str) -> None:
    print(f"fetch failed: {reason}", file=sys.stderr, flush=True)
    path = Path(termination_log)
    # Kubernetes creates /dev/termination-log in the container; another path (a test's) is written if it can be.
    if path.exists() or (termination_log != TERMINATION_LOG and path.parent.is_dir()):
        with contextlib.suppress(OSError):  # the reason is on stderr anyway
            path.write_text(reason + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: returns the exit code (0, or an :class:`ExitCode` naming the failure)."""
    args = _parser().parse_args(argv)
    options = FetchOptions(
        source=args.source,
        cache_dir=args.cache_dir,
        entry=args.entry,
        revision=args.revision,
        expected_bytes=args.expected_bytes,
        parallel=args.parallel,
        max_mbps=args.max_mbps,
        s3_endpoint=args.s3_endpoint,
        progress_interval_s=args.progress_interval,
        retries=args.retries,
    )
    try:
        result = fetch(options, log=lambda line: print(line, flush=True))
    except FetchError as error:
        _report_failure(error.reason, args.termination_log)
        return int(error.code)
    except Exception as error:  # a bug or an unmapped OS error: still one line in the pod status
        traceback.print_exc()
        _report_failure(f"{type(error).__name__}: {error}", args.termination_log)
        return 1
    if result.already_present:
        print(f"fetch {options.entry}: already complete in {result.entry_dir}", flush=True)
    else:
        rate = result.fetched_bytes * 8 / 1e6 / max(result.seconds, 1e-6)
        print(
            f"fetch {options.entry}: complete, {result.files} files, {human_bytes(result.total_bytes)} in "
            f"{result.entry_dir}; {human_bytes(result.fetched_bytes)} fetched in {result.seconds:.1f} s "
            f"({rate:.0f} Mbit/s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
