"""Tarball sources (``.tar``, ``.tar.gz``, ``.tgz``): every member is checked before anything is written (only
regular files and directories, at relative paths without ``..``), then the files are copied out one by one
into the entry; nothing is left to tarfile's own extraction rules.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import threading
import zlib
from pathlib import Path

from dspool.weights.fetch_common import ExitCode, FetchError, safe_relative

TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _member_path(member: tarfile.TarInfo) -> str:
    """The member's name without a leading ``./`` (``tar -C dir .`` writes those); ``""`` for the root."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if name != "." else ""


def checked_members(tar: tarfile.TarFile) -> list[tuple[str, tarfile.TarInfo]]:
    """Every regular file of the archive with its safe relative path; FetchError(UNSAFE) on an absolute path,
    a ``..``, a link or a device, before anything is extracted."""
    files = []
    for member in tar.getmembers():
        path = _member_path(member)
        if not path:
            continue
        if not (member.isfile() or member.isdir()):
            raise FetchError(ExitCode.UNSAFE, f"tarball member {member.name!r} is a link or a device: refused")
        try:
            safe_relative(path)
        except FetchError as error:
            reason = f"tarball member {member.name!r} is outside the entry: refused"
            raise FetchError(ExitCode.UNSAFE, reason) from error
        if member.isfile():
            files.append((path, member))
    if not files:
        raise FetchError(ExitCode.SOURCE, "the tarball holds no files")
    return files


def extract(archive: Path, destination: Path, stop: threading.Event) -> list[tuple[str, int]]:
    """Extract the archive's regular files under ``destination``; returns (path, size) of each."""
    extracted = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for path, member in checked_members(tar):
                if stop.is_set():
                    raise FetchError(ExitCode.CANCELLED, "cancelled")
                source = tar.extractfile(member)
                if source is None:
                    raise FetchError(ExitCode.SOURCE, f"tarball member {member.name!r} cannot be read")
                target = destination / path
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1024 * 1024)
                if target.stat().st_size != member.size:
                    raise FetchError(ExitCode.VERIFY, f"tarball member {path}: short read")
                extracted.append((path, member.size))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise FetchError(ExitCode.VERIFY, f"the tarball is damaged: {type(error).__name__}: {error}") from error
    return extracted
