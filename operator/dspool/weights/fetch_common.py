"""What every part of the fetch shares: the error a fetch fails with (and its exit code), one remote file, safe
relative paths, and the names of the files a fetch keeps in its partial directory.

Standard library only: the fetch runs in the operator's own image, with nothing installed at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import PurePosixPath

# The same values as dspool.weights.state (a test keeps them equal); repeated here so that the fetch does not
# import pydantic through state.py.
ENTRY_MARKER = ".dspool-entry.json"
PARTIAL_DIR = ".partial"

PROGRESS_FILE = ".progress.json"  # in the partial directory, rewritten every few seconds
JOURNAL_FILE = ".dspool-journal.jsonl"  # in the partial directory: one line per verified file
ARCHIVE_DIR = ".dspool-archive"  # in the partial directory: a tarball while it downloads
PART_SUFFIX = ".part"  # a file being written; renamed to its name once verified
CONTROL_NAMES = frozenset({ENTRY_MARKER, PROGRESS_FILE, JOURNAL_FILE, ARCHIVE_DIR})
_ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,252}$")


class ExitCode(IntEnum):
    """The fetch's exit codes (docs/weights.md lists them)."""

    OK = 0
    USAGE = 2  # a bad argument or an unsupported source
    VERIFY = 3  # a size or checksum mismatch
    DISK = 4  # not enough free space
    SOURCE = 5  # the source failed: HTTP errors, network, a malformed listing
    UNSAFE = 6  # a path that would land outside the entry (absolute, "..", links in a tarball)
    BUSY = 7  # another fetch of the same entry holds its lock
    CANCELLED = 8  # stopped because another file of the same fetch failed


class FetchError(Exception):
    """A fetch that cannot finish, with a one-line reason and its exit code."""

    def __init__(self, code: ExitCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class RemoteFile:
    """One file of an entry: where it goes (relative to the entry), where it comes from, and what it must be."""

    path: str
    url: str
    size: int | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None  # a model hub's oid for small files kept in git rather than LFS


def safe_relative(path: str) -> PurePosixPath:
    """``path`` as a relative path that stays inside the entry, or FetchError(UNSAFE): no absolute paths, no
    ``..``, no empty or ``.`` segments, no backslashes or NULs, and none of the fetch's own file names."""
    pure = PurePosixPath(path)
    parts = path.split("/")
    if (
        not path
        or pure.is_absolute()
        or "\\" in path
        or "\0" in path
        or any(part in ("", ".", "..") for part in parts)
        or parts[0] in CONTROL_NAMES
        or parts[0] == PARTIAL_DIR
        or path.endswith(PART_SUFFIX)
    ):
        raise FetchError(ExitCode.UNSAFE, f"unsafe path in the source: {path!r}")
    return pure


def check_entry_id(entry: str) -> str:
    """The entry id if it is a safe directory name (lower-case letters, digits, ``.``, ``_``, ``-``)."""
    if not _ENTRY_ID.match(entry) or entry in (".", ".."):
        raise FetchError(ExitCode.USAGE, f"invalid entry id {entry!r}: lower-case letters, digits, '.', '_', '-'")
    return entry


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``; for log lines and reasons."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
