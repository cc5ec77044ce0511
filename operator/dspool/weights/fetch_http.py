"""Moving bytes: an HTTP origin (with a source's authentication), a shared bandwidth cap, progress counters, and
the download of one file that resumes with a ``Range`` request and is verified before it counts.

Standard library only (urllib, hashlib).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from dspool.weights.fetch_common import ExitCode, FetchError, RemoteFile

CHUNK_BYTES = 1024 * 1024
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
T = TypeVar("T")
Signer = Callable[[str, str, dict[str, str]], dict[str, str]]  # (method, url, headers) -> headers to send


def redacted(url: str) -> str:
    """The URL without its query (a CDN's signed query must not reach logs or the pod status)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class _SameHostAuthRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping the Authorization header when the redirect leaves the host (a hub's token
    must not travel to the CDN it redirects to)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


class Origin:
    """Where a source's files are fetched from: opens URLs with the source's authentication (a bearer token, an
    S3 signature) and turns failures into FetchError."""

    def __init__(self, signer: Signer | None = None, timeout_s: float = 60.0) -> None:
        self.signer = signer
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_SameHostAuthRedirects())

    def open(self, url: str, headers: Mapping[str, str] | None = None, method: str = "GET") -> http.client.HTTPResponse:
        """The response to ``method url``; HTTPError (kept, for callers that handle a status) on an error status."""
        sent = dict(headers or {})
        if self.signer is not None:
            sent = self.signer(method, url, sent)
        request = urllib.request.Request(url, headers=sent, method=method)
        response = self._opener.open(request, timeout=self.timeout_s)
        assert isinstance(response, http.client.HTTPResponse)
        return response

    def read(self, url: str, what: str, retries: int = 3) -> bytes:
        """The whole body of a small document (a manifest, a listing page), with retries on transient errors."""

        def attempt() -> bytes:
            with self.open(url) as response:
                return response.read()

        return with_retries(attempt, retries, what, url)


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: timeouts, resets, 5xx and 429; not 4xx."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in TRANSIENT_HTTP
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return False
    return isinstance(error, urllib.error.URLError | http.client.HTTPException | OSError)


def source_error(error: BaseException, what: str, url: str) -> FetchError:
    """A one-line FetchError for a failed request."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return FetchError(ExitCode.DISK, f"{what}: the disk is full")
    if isinstance(error, urllib.error.HTTPError):
        hint = " (check the credentials)" if error.code in (401, 403) else ""
        return FetchError(ExitCode.SOURCE, f"{what}: HTTP {error.code} {error.reason} from {redacted(url)}{hint}")
    return FetchError(ExitCode.SOURCE, f"{what}: {type(error).__name__}: {error} ({redacted(url)})")


def with_retries(attempt: Callable[[], T], retries: int, what: str, url: str) -> T:
    """``attempt()``, retried with a growing pause (1, 2, 4... up to 30 s) on transient errors."""
    for number in range(retries + 1):
        try:
            return attempt()
        except FetchError:
            raise
        except Exception as error:
            if number >= retries or not is_transient(error):
                raise source_error(error, what, url) from error
            time.sleep(min(30.0, 2.0**number))
    raise AssertionError("unreachable")


class Throttle:
    """A bandwidth cap shared by every download of one fetch (``--max-mbps``); None means no cap."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self.bytes_per_s = bytes_per_s
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def take(self, count: int) -> None:
        """Wait until ``count`` more bytes fit under the cap."""
        if not self.bytes_per_s:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + count / self.bytes_per_s
        if start > now:
            time.sleep(start - now)


@dataclass
class Progress:
    """Bytes on disk and expected, shared by the downloads; read by the reporter."""

    total_bytes: int = 0
    done_bytes: int = 0
    files_total: int = 0
    files_done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, count: int) -> None:
        """Count bytes written (negative when a file restarts)."""
        with self._lock:
            self.done_bytes += count

    def file_done(self) -> None:
        """Count one verified file."""
        with self._lock:
            self.files_done += 1


@dataclass
class Transfer:
    """What every download of one fetch shares."""

    origin: Origin
    throttle: Throttle
    progress: Progress
    stop: threading.Event
    retries: int = 5


class _Verifier:
    """The hashes of one file's bytes as they are written."""

    def __init__(self, remote: RemoteFile) -> None:
        self.remote = remote
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(f"blob {remote.size}\0".encode()) if remote.git_blob_sha1 else None
        self.written = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.written += len(data)

    def mismatch(self) -> str:
        """Why the bytes are not the file the source describes, or ``""``."""
        remote = self.remote
        if remote.size is not None and self.written != remote.size:
            return f"size mismatch for {remote.path}: expected {remote.size} bytes, got {self.written}"
        got = self.sha256.hexdigest()
        if remote.sha256 is not None and got != remote.sha256.lower():
            return f"sha256 mismatch for {remote.path}: expected {remote.sha256.lower()}, got {got}"
        if self.git is not None and remote.git_blob_sha1 and self.git.hexdigest() != remote.git_blob_sha1.lower():
            got = self.git.hexdigest()
            return f"git blob sha1 mismatch for {remote.path}: expected {remote.git_blob_sha1}, got {got}"
        return ""


def _resume_point(part: Path, remote: RemoteFile, verifier: _Verifier) -> int:
    """Bytes already in ``part`` that are kept (hashed again, since hashes cannot be saved); 0 restarts."""
    if not part.exists():
        return 0
    size = part.stat().st_size
    if remote.size is not None and size > remote.size:
        part.unlink()
        return 0
    with part.open("rb") as existing:
        while block := existing.read(CHUNK_BYTES):
            verifier.update(block)
    return size


def _stream(response: http.client.HTTPResponse, sink: IO[bytes], verifier: _Verifier, transfer: Transfer) -> None:
    """Copy the body into ``sink``, under the cap, stopping if the fetch is cancelled or the body runs long."""
    limit = verifier.remote.size
    while block := response.read(CHUNK_BYTES):
        if transfer.stop.is_set():
            raise FetchError(ExitCode.CANCELLED, "cancelled")
        transfer.throttle.take(len(block))
        sink.write(block)
        verifier.update(block)
        transfer.progress.add(len(block))
        if limit is not None and verifier.written > limit:
            return  # longer than the source says: the size check fails it
    if response.length:  # http.client ends a body cut short with b"", not an error: make it one (retried)
        raise http.client.IncompleteRead(b"", response.length)


def _open_rest(remote: RemoteFile, part: Path, verifier: _Verifier, transfer: Transfer) -> http.client.HTTPResponse:
    """The response carrying the file from ``verifier.written`` on: a ``Range`` request when bytes are on disk;
    a server that ignores it (200) restarts the file with that body; one that refuses it (416) or answers
    another range restarts it with a new request."""
    offset = verifier.written
    if not offset:
        return transfer.origin.open(remote.url)
    try:
        response = transfer.origin.open(remote.url, {"Range": f"bytes={offset}-"})
    except urllib.error.HTTPError as error:
        if error.code != 416:
            raise
        _restart(part, verifier, transfer)
        return transfer.origin.open(remote.url)
    if response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        return response
    _restart(part, verifier, transfer)
    if response.status == 200:
        return response
    response.close()
    return transfer.origin.open(remote.url)


def _one_attempt(remote: RemoteFile, part: Path, verifier: _Verifier, transfer: Transfer) -> None:
    """One request for the rest of the file, appended to ``part`` and synced."""
    if remote.size is not None and verifier.written == remote.size:
        return  # complete on disk (killed between the last byte and the journal)
    with _open_rest(remote, part, verifier, transfer) as response, part.open("ab") as sink:
        _stream(response, sink, verifier, transfer)
        sink.flush()
        os.fsync(sink.fileno())


def _restart(part: Path, verifier: _Verifier, transfer: Transfer) -> None:
    """Throw away the bytes of ``part`` (the server cannot resume it)."""
    transfer.progress.add(-verifier.written)
    part.write_bytes(b"")
    fresh = _Verifier(verifier.remote)
    verifier.sha256, verifier.git, verifier.written = fresh.sha256, fresh.git, 0


def download_file(remote: RemoteFile, part: Path, transfer: Transfer) -> str:
    """Fetch ``remote`` into ``part``, resuming what is there, retrying transient errors from where it stopped,
    and verify it (size always, sha256 and git oid when known). Returns its sha256; a mismatch deletes ``part``
    and raises FetchError(VERIFY)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    verifier = _Verifier(remote)
    transfer.progress.add(_resume_point(part, remote, verifier))

    def attempt() -> None:
        _one_attempt(remote, part, verifier, transfer)

    with_retries(attempt, transfer.retries, f"downloading {remote.path}", remote.url)
    reason = verifier.mismatch()
    if reason:
        transfer.progress.add(-verifier.written)
        part.unlink(missing_ok=True)
        raise FetchError(ExitCode.VERIFY, reason)
    return verifier.sha256.hexdigest()
