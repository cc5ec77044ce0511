"""From a source URI to the list of files to fetch and the origin to fetch them from.

``https://.../name.json`` is a manifest, ``https://.../name.tar[.gz]`` or ``.tgz`` a tarball, ``s3://`` an
S3-compatible prefix (with the sha256 of a ``dspool-manifest.json`` in it when there is one), ``hf://`` a model
hub repository. ``modelscope://`` is refused: its API is not implemented with the standard library here.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace

from dspool.weights.fetch_common import ARCHIVE_DIR, ExitCode, FetchError, RemoteFile
from dspool.weights.fetch_hf import hub_endpoint, hub_signer, list_hub, pin_revision
from dspool.weights.fetch_http import Origin, source_error
from dspool.weights.fetch_manifest import MANIFEST_NAME, parse_manifest
from dspool.weights.fetch_s3 import list_s3, s3_location
from dspool.weights.fetch_tar import TARBALL_SUFFIXES

_SHA256_LINE = re.compile(r"^\s*([0-9a-fA-F]{64})\b")
MODELSCOPE_REFUSAL = (
    "modelscope:// is not supported by the built-in fetch (no standard-library client for its API); "
    "mirror the checkpoint to S3, an HTTP server with a manifest, or a model hub mirror (HF_ENDPOINT)"
)


@dataclass(frozen=True)
class SourcePlan:
    """What to fetch: the files (one archive for a tarball), from where, and the revision it was pinned to."""

    files: list[RemoteFile]
    origin: Origin
    tarball: bool = False
    resolved_revision: str = ""

    def total_bytes(self) -> int:
        """Bytes of the files whose size is known."""
        return sum(f.size or 0 for f in self.files)

    def needed_bytes(self, expected: int) -> int:
        """Disk the fetch needs: the files; for a tarball the archive plus what it extracts to (``expected``,
        else the archive's size again)."""
        if self.tarball:
            archive = self.total_bytes() or expected
            return archive + (expected or archive)
        return max(self.total_bytes(), expected)


def _tarball_size(origin: Origin, url: str) -> int | None:
    """The archive's size from a HEAD request, when the server gives one."""
    try:
        with origin.open(url, method="HEAD") as response:
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError as error:
        if error.code in (404, 401, 403):
            raise source_error(error, "checking the tarball", url) from error
        return None
    except (urllib.error.URLError, OSError) as error:
        raise source_error(error, "checking the tarball", url) from error
    return int(length) if length and length.isdigit() else None


def _published_sha256(origin: Origin, url: str) -> str | None:
    """The sha256 a server publishes next to a file as ``<url>.sha256`` (``sha256sum`` output), if any."""
    try:
        with origin.open(f"{url}.sha256") as response:
            found = _SHA256_LINE.match(response.read(4096).decode("utf-8", "replace"))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise source_error(error, "reading the tarball's .sha256", url) from error
    except (urllib.error.URLError, OSError) as error:
        raise source_error(error, "reading the tarball's .sha256", url) from error
    return found.group(1).lower() if found else None


def _http_plan(uri: str) -> SourcePlan:
    origin = Origin()
    path = urllib.parse.urlsplit(uri).path
    if path.endswith(TARBALL_SUFFIXES):
        name = path.rsplit("/", 1)[-1]
        size, sha256 = _tarball_size(origin, uri), _published_sha256(origin, uri)
        archive = RemoteFile(path=f"{ARCHIVE_DIR}/{name}", url=uri, size=size, sha256=sha256)
        return SourcePlan([archive], origin, tarball=True)
    if path.endswith(".json"):
        return SourcePlan(parse_manifest(origin.read(uri, "reading the manifest"), uri), origin)
    raise FetchError(
        ExitCode.USAGE, f"an http(s) source is a manifest (.json) or a tarball (.tar, .tar.gz, .tgz): {uri!r}"
    )


def _with_manifest_checksums(files: list[RemoteFile], origin: Origin) -> list[RemoteFile]:
    """S3 files with the sha256 of the prefix's manifest, when it has one (and without the manifest itself)."""
    manifest = next((f for f in files if f.path == MANIFEST_NAME), None)
    if manifest is None:
        return files
    listed = {f.path: f for f in parse_manifest(origin.read(manifest.url, "reading the manifest"), manifest.url)}
    out = []
    for remote in files:
        if remote.path == MANIFEST_NAME:
            continue
        known = listed.get(remote.path)
        if known is not None and known.size != remote.size:
            raise FetchError(
                ExitCode.VERIFY, f"{remote.path}: the manifest says {known.size} bytes, the store {remote.size}"
            )
        out.append(replace(remote, sha256=known.sha256) if known is not None else remote)
    return out


def _hub_plan(uri: str, revision: str, env: Mapping[str, str]) -> SourcePlan:
    repo = uri[len("hf://") :].strip("/")
    if "@" in repo and not revision:
        repo, _, revision = repo.partition("@")
    if repo.count("/") != 1:
        raise FetchError(ExitCode.USAGE, f"an hf source is hf://org/repo: {uri!r}")
    endpoint = hub_endpoint(env)
    origin = Origin(hub_signer(env))
    commit = pin_revision(origin, endpoint, repo, revision or "main")
    return SourcePlan(list_hub(origin, endpoint, repo, commit), origin, resolved_revision=commit)


def plan_source(uri: str, revision: str, s3_endpoint: str, env: Mapping[str, str]) -> SourcePlan:
    """List the source's files (contacting it); FetchError(USAGE) for a source this fetch cannot read."""
    if uri.startswith("hf://"):
        return _hub_plan(uri, revision, env)
    if uri.startswith("s3://"):
        location = s3_location(uri, s3_endpoint or None, env)
        origin = Origin(location.signer)
        return SourcePlan(_with_manifest_checksums(list_s3(origin, location), origin), origin)
    if uri.startswith(("http://", "https://")):
        return _http_plan(uri)
    if uri.startswith("modelscope://"):
        raise FetchError(ExitCode.USAGE, MODELSCOPE_REFUSAL)
    raise FetchError(ExitCode.USAGE, f"unsupported source {uri!r}: hf://, s3://, http(s):// manifest or tarball")
