"""``hf://org/repo`` sources: a model hub's HTTP API, at the endpoint the site gives in ``HF_ENDPOINT`` (the hub
itself or a mirror; nothing here names a host), with the token from ``HF_TOKEN``.

The API calls are those huggingface_hub makes (src/huggingface_hub/hf_api.py: ``model_info`` and
``list_repo_tree``; src/huggingface_hub/constants.py: the ``resolve`` URL template;
src/huggingface_hub/utils/_pagination.py: pages follow the ``Link: <...>; rel="next"`` header):

- ``GET {endpoint}/api/models/{repo}/revision/{revision}`` -> ``{"sha": "<commit>", ...}``: the revision is
  pinned to its commit first, so that a branch moving during a fetch cannot mix two versions;
- ``GET {endpoint}/api/models/{repo}/tree/{commit}?recursive=true`` -> ``[{"type": "file", "path", "size",
  "oid", "lfs": {"oid": "<sha256>", "size", "pointerSize"}}, {"type": "directory", ...}]``: ``lfs.oid`` is the
  sha256 of an LFS file; ``oid`` of a small file is its git blob sha1, also checked;
- ``GET {endpoint}/{repo}/resolve/{commit}/{path}``: the file (often a redirect to a CDN).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from dspool.weights.fetch_common import ExitCode, FetchError, RemoteFile, safe_relative
from dspool.weights.fetch_http import Origin, Signer, with_retries

_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def hub_endpoint(env: Mapping[str, str]) -> str:
    """The hub's base URL from ``HF_ENDPOINT``; required (a site names its hub or its mirror)."""
    endpoint = env.get("HF_ENDPOINT", "").strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise FetchError(ExitCode.USAGE, "an hf:// source needs HF_ENDPOINT (the model hub's URL, or a mirror's)")
    return endpoint


def hub_signer(env: Mapping[str, str]) -> Signer | None:
    """A signer adding ``Authorization: Bearer $HF_TOKEN`` when a token is set, else None."""
    token = env.get("HF_TOKEN", "").strip()
    if not token:
        return None

    def sign(method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "Authorization": f"Bearer {token}"}

    return sign


def _json(origin: Origin, url: str, what: str) -> tuple[Any, str]:
    """A JSON document and the URL of its next page ("" when last)."""

    def attempt() -> tuple[bytes, str]:
        with origin.open(url) as response:
            return response.read(), response.headers.get("Link", "")

    body, link = with_retries(attempt, 3, what, url)
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FetchError(ExitCode.SOURCE, f"{what}: the hub did not answer JSON") from error
    found = _NEXT_LINK.search(link)
    return document, urllib.parse.urljoin(url, found.group(1)) if found else ""


def pin_revision(origin: Origin, endpoint: str, repo: str, revision: str) -> str:
    """The commit sha ``revision`` (a branch, a tag or a sha) points to."""
    url = f"{endpoint}/api/models/{repo}/revision/{urllib.parse.quote(revision, safe='')}"
    document, _ = _json(origin, url, f"resolving {repo}@{revision}")
    sha = document.get("sha") if isinstance(document, dict) else None
    if not isinstance(sha, str) or not sha:
        raise FetchError(ExitCode.SOURCE, f"resolving {repo}@{revision}: the hub's answer has no 'sha'")
    return sha


def _file_of(item: dict[str, Any], endpoint: str, repo: str, commit: str) -> RemoteFile:
    path = item.get("path")
    size = item.get("size")
    if not isinstance(path, str) or not isinstance(size, int):
        raise FetchError(ExitCode.SOURCE, f"listing {repo}: a file without 'path' or 'size': {item!r:.120}")
    safe_relative(path)
    lfs = item.get("lfs")
    url = f"{endpoint}/{repo}/resolve/{urllib.parse.quote(commit, safe='')}/{urllib.parse.quote(path)}"
    if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
        return RemoteFile(path=path, url=url, size=size, sha256=lfs["oid"])
    oid = item.get("oid")
    return RemoteFile(path=path, url=url, size=size, git_blob_sha1=oid if isinstance(oid, str) else None)


def list_hub(origin: Origin, endpoint: str, repo: str, commit: str) -> list[RemoteFile]:
    """Every file of the repository at ``commit``, with sizes and the checksums the hub publishes."""
    files: list[RemoteFile] = []
    url = f"{endpoint}/api/models/{repo}/tree/{urllib.parse.quote(commit, safe='')}?recursive=true"
    while url:
        page, url = _json(origin, url, f"listing {repo}")
        if not isinstance(page, list):
            raise FetchError(ExitCode.SOURCE, f"listing {repo}: the hub's answer is not a list")
        files.extend(_file_of(item, endpoint, repo, commit) for item in page if item.get("type") == "file")
    if not files:
        raise FetchError(ExitCode.SOURCE, f"listing {repo}@{commit}: no files")
    return files
