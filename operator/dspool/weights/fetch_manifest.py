"""The manifest: a JSON file that lists an entry's files with their sizes and sha256, so that an HTTP server
(or an S3 prefix) can publish a checkpoint file by file, verified. docs/weights.md describes the format::

    {"format": "dspool-manifest/v1",
     "files": [{"path": "config.json", "size": 1725, "sha256": "9f86d0..."},
               {"path": "model-00001-of-000163.safetensors", "size": 5234139343, "sha256": "..."}]}

``path`` is relative to the manifest's URL (and is where the file lands in the entry); ``size`` is required;
``sha256`` is optional but recommended; ``url`` (optional) overrides where the file is fetched from, absolute
or relative to the manifest.

``python -m dspool.weights.fetch_manifest DIR > DIR/dspool-manifest.json`` writes one for a directory.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspool.weights.fetch_common import CONTROL_NAMES, ExitCode, FetchError, RemoteFile, safe_relative

MANIFEST_FORMAT = "dspool-manifest/v1"
MANIFEST_NAME = "dspool-manifest.json"  # its name when a directory or an S3 prefix carries one
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _file_of(item: Any, base_url: str) -> RemoteFile:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise FetchError(ExitCode.SOURCE, f"manifest: each file needs a 'path': {item!r:.120}")
    path = item["path"]
    safe_relative(path)
    size, sha256, url = item.get("size"), item.get("sha256"), item.get("url")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FetchError(ExitCode.SOURCE, f"manifest: {path}: 'size' must be a whole number of bytes")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise FetchError(ExitCode.SOURCE, f"manifest: {path}: 'sha256' must be 64 hex digits")
    if url is not None and not isinstance(url, str):
        raise FetchError(ExitCode.SOURCE, f"manifest: {path}: 'url' must be a string")
    target = urllib.parse.urljoin(base_url, url if url else urllib.parse.quote(path))
    return RemoteFile(path=path, url=target, size=size, sha256=sha256.lower() if sha256 else None)


def parse_manifest(body: bytes, base_url: str) -> list[RemoteFile]:
    """The files a manifest lists, with URLs resolved against ``base_url``; FetchError if it is malformed."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FetchError(ExitCode.SOURCE, f"manifest: not JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise FetchError(ExitCode.SOURCE, f"manifest: 'format' must be {MANIFEST_FORMAT!r}")
    items = document.get("files")
    if not isinstance(items, list) or not items:
        raise FetchError(ExitCode.SOURCE, "manifest: 'files' must be a non-empty list")
    files = [_file_of(item, base_url) for item in items]
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise FetchError(ExitCode.SOURCE, "manifest: a path is listed twice")
    return files


def file_sha256(path: Path) -> str:
    """The sha256 of a local file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of every regular file under ``directory`` (except a manifest and dspool's own files)."""
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_NAME or relative.split("/")[0] in CONTROL_NAMES:
            continue
        files.append({"path": relative, "size": path.stat().st_size, "sha256": file_sha256(path)})
    return {"format": MANIFEST_FORMAT, "files": files}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the manifest of the directory given as the only argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m dspool.weights.fetch_manifest DIR > DIR/dspool-manifest.json", file=sys.stderr)
        return int(ExitCode.USAGE)
    print(json.dumps(build_manifest(Path(args[0])), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
