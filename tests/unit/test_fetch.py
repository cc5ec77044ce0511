"""The fetch runs for real: against an HTTP server started here (Range support, a manifest and its files, tarballs,
a tiny model hub), against moto's S3 server when it is installed, and killed with SIGKILL mid-download.

No network access beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dspool.weights import state
from dspool.weights.fetch import FetchOptions, fetch, main
from dspool.weights.fetch_common import ENTRY_MARKER, JOURNAL_FILE, PARTIAL_DIR, PROGRESS_FILE, ExitCode, FetchError
from dspool.weights.fetch_manifest import MANIFEST_FORMAT, build_manifest
from dspool.weights.fetch_s3 import Credentials, sign_v4

ENTRY = "deepseek-tiny-fp8-1f0c2a9e"
CHUNK = 64 * 1024
OPERATOR_DIR = str(Path(__file__).resolve().parents[2] / "operator")


@dataclass
class Served:
    """What the test server serves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    documents: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)  # path?query -> JSON, headers
    redirects: dict[str, str] = field(default_factory=dict)  # path -> location
    slow: dict[str, float] = field(default_factory=dict)  # path -> seconds to sleep after each 64 KiB
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped
    cut_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping the connection
    ranges: bool = True  # False: Range headers are ignored (200 and the whole file)
    requests: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[dict[str, str]]:
        """The GET requests for ``path``."""
        with self.lock:
            return [r for r in self.requests if r["method"] == "GET" and r["path"] == path]


class ServedHandler(BaseHTTPRequestHandler):
    """Serves a :class:`Served` (set as ``served`` on a subclass), with ``Range``, redirects and slow paths."""

    served: Served

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body_wanted=False)

    def do_GET(self) -> None:
        self._answer(body_wanted=True)

    def _answer(self, body_wanted: bool) -> None:
        path = self.path.split("?", 1)[0]
        with self.served.lock:
            self.served.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "target": self.path,
                    "range": self.headers.get("Range", ""),
                    "authorization": self.headers.get("Authorization", ""),
                }
            )
        if self.path in self.served.documents:
            body, headers = self.served.documents[self.path]
            return self._send(200, body if body_wanted else b"", {"Content-Type": "application/json", **headers})
        if path in self.served.redirects:
            return self._send(302, b"", {"Location": self.served.redirects[path]})
        if path not in self.served.files:
            return self._send(404, b"not found", {})
        self._send_file(path, body_wanted)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, path: str, body_wanted: bool) -> None:
        body = self.served.files[path]
        if path in self.served.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        found = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if found and self.served.ranges:
            start = int(found.group(1))
            if start >= len(body):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes" if self.served.ranges else "none")
        self.end_headers()
        if not body_wanted:
            return
        end = start + self.served.cut_once.pop(path, len(body))
        try:
            for offset in range(start, min(end, len(body)), CHUNK):
                self.wfile.write(body[offset : offset + CHUNK])
                if self.served.slow.get(path):
                    self.wfile.flush()
                    time.sleep(self.served.slow[path])
        except (BrokenPipeError, ConnectionResetError):
            pass
        if end < len(body):
            self.close_connection = True  # short of its Content-Length: the client sees the connection drop


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (ServedHandler,), {"served": served}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def random_files(sizes: dict[str, int], seed: int = 7) -> dict[str, bytes]:
    """Files of random bytes (reproducible)."""
    out = {}
    for number, (name, size) in enumerate(sizes.items()):
        out[name] = hashlib.shake_256(f"{seed}-{number}".encode()).digest(size)
    return out


def publish_manifest(served: Served, base: str, files: dict[str, bytes]) -> str:
    """Serve ``files`` under ``/m/`` with their manifest; returns the manifest's URL."""
    for name, body in files.items():
        served.files[f"/m/{name}"] = body
    manifest = {
        "format": MANIFEST_FORMAT,
        "files": [{"path": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()],
    }
    served.files["/m/manifest.json"] = json.dumps(manifest).encode()
    return f"{base}/m/manifest.json"


def assert_ready(cache: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """The entry is complete, holds exactly ``files``, and .partial holds nothing of it; returns its marker."""
    entry = cache / ENTRY
    marker: dict[str, Any] = json.loads((entry / ENTRY_MARKER).read_text())
    assert marker["entry"] == ENTRY and marker["total_bytes"] == sum(len(b) for b in files.values())
    assert {f["path"]: f["size"] for f in marker["files"]} == {n: len(b) for n, b in files.items()}
    for name, body in files.items():
        assert (entry / name).read_bytes() == body
    on_disk = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()}
    assert on_disk == {*files, ENTRY_MARKER}
    assert not (cache / PARTIAL_DIR / ENTRY).exists()
    return marker


def options(source: str, cache: Path, **extra: Any) -> FetchOptions:
    settings: dict[str, Any] = {"progress_interval_s": 0.2, "retries": 1, **extra}
    return FetchOptions(source=source, cache_dir=cache, entry=ENTRY, **settings)


def quiet(_: str) -> None:
    pass


def test_the_fetch_shares_the_cache_layout_with_the_operator() -> None:
    # fetch_common repeats these so that the fetch does not import pydantic; they must not drift apart.
    assert ENTRY_MARKER == state.ENTRY_MARKER and PARTIAL_DIR == state.PARTIAL_DIR


def test_a_manifest_fetch_makes_a_ready_entry_and_a_second_fetch_does_nothing(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    files = random_files({"config.json": 1200, "model-00001.safetensors": 1_500_000, "sub/dir/model-2.bin": 900_000})
    source = publish_manifest(served, base, files)
    result = fetch(options(source, tmp_path), log=quiet)
    marker = assert_ready(tmp_path, files)
    assert result.total_bytes == marker["total_bytes"] and result.files == 3
    assert all(
        f["verified"] == "sha256" and f["sha256"] == hashlib.sha256(files[f["path"]]).hexdigest()
        for f in marker["files"]
    )
    served.requests.clear()
    again = fetch(options(source, tmp_path), log=quiet)
    assert again.already_present and served.requests == []  # a complete entry is never fetched again


def _journaled(partial: Path) -> set[str]:
    journal = partial / JOURNAL_FILE
    if not journal.exists():
        return set()
    return {json.loads(line)["path"] for line in journal.read_text().splitlines() if line.endswith("}")}


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_with_sigkill_mid_file_it_resumes_without_fetching_finished_files_again(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    files = random_files({"a.bin": 300_000, "b.bin": 700_000, "sub/big.bin": 6 * 1024 * 1024})
    source = publish_manifest(served, base, files)
    served.slow["/m/sub/big.bin"] = 0.05  # ~1.3 MB/s: still mid-file when killed
    partial = tmp_path / PARTIAL_DIR / ENTRY
    big_part = partial / "sub" / "big.bin.part"
    command = [sys.executable, "-m", "dspool.weights.fetch", "--source", source, "--cache-dir", str(tmp_path)]
    command += ["--entry", ENTRY, "--parallel", "3", "--progress-interval", "0.2"]
    env = {**os.environ, "PYTHONPATH": OPERATOR_DIR}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _journaled(partial) == {"a.bin", "b.bin"}, "the small files to be verified")
        _wait_for(lambda: big_part.exists() and big_part.stat().st_size >= 1024 * 1024, "1 MiB of big.bin")
        _wait_for(lambda: (partial / PROGRESS_FILE).exists(), "the progress file")
        progress = json.loads((partial / PROGRESS_FILE).read_text())
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert progress["entry"] == ENTRY and progress["bytes_total"] == sum(len(b) for b in files.values())
    assert 0 < progress["bytes_done"] < progress["bytes_total"]
    kept = big_part.stat().st_size
    assert not (tmp_path / ENTRY).exists()

    served.slow.clear()
    served.requests.clear()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert "complete, 3 files" in second.stdout.splitlines()[-1]
    assert_ready(tmp_path, files)
    assert served.gets("/m/a.bin") == [] and served.gets("/m/b.bin") == []  # finished files: not fetched again
    resumed = served.gets("/m/sub/big.bin")
    assert [r["range"] for r in resumed] == [f"bytes={kept}-"] and kept > 0


def test_a_checksum_mismatch_leaves_no_ready_entry_and_says_why(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    files = random_files({"good.bin": 200_000, "bad.bin": 400_000})
    source = publish_manifest(served, base, files)
    served.corrupt.add("/m/bad.bin")
    termination = tmp_path / "termination-log"
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = ["--source", source, "--cache-dir", str(cache), "--entry", ENTRY, "--termination-log", str(termination)]
    argv += ["--parallel", "1"]  # good.bin (listed first) is verified before bad.bin starts
    code = main([*argv, "--retries", "0"])
    assert code == ExitCode.VERIFY
    reason = termination.read_text().strip()
    assert reason.startswith("sha256 mismatch for bad.bin: expected ") and "\n" not in reason
    assert not (cache / ENTRY).exists()
    partial = cache / PARTIAL_DIR / ENTRY
    assert not (partial / "bad.bin").exists() and not (partial / "bad.bin.part").exists()  # the bad bytes are gone
    served.corrupt.clear()
    served.requests.clear()
    assert main(argv) == 0  # fixed at the source: the next run fetches only the file that failed
    assert_ready(cache, files)
    assert served.gets("/m/good.bin") == []


def _tarball(members: dict[str, bytes], gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_a_tarball_is_extracted_into_a_ready_entry_and_verified_by_its_published_sha256(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    files = random_files({"config.json": 800, "weights/model-1.safetensors": 1_200_000})
    archive = _tarball({f"./{name}": body for name, body in files.items()})
    served.files["/t/tiny.tar.gz"] = archive
    served.files["/t/tiny.tar.gz.sha256"] = f"{hashlib.sha256(archive).hexdigest()}  tiny.tar.gz\n".encode()
    fetch(options(f"{base}/t/tiny.tar.gz", tmp_path), log=quiet)
    marker = assert_ready(tmp_path, files)
    assert {f["verified"] for f in marker["files"]} == {"tarball"}

    served.corrupt.add("/t/tiny.tar.gz")
    with pytest.raises(FetchError) as failed:
        fetch(options(f"{base}/t/tiny.tar.gz", tmp_path / "other"), log=quiet)
    assert failed.value.code == ExitCode.VERIFY and "sha256 mismatch" in failed.value.reason


def test_a_tarball_with_a_path_outside_the_entry_is_refused(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    cache = tmp_path / "cache"
    cache.mkdir()
    served.files["/t/evil.tar"] = _tarball({"config.json": b"{}", "../escaped.txt": b"owned"}, gz=False)
    code = main(["--source", f"{base}/t/evil.tar", "--cache-dir", str(cache), "--entry", ENTRY])
    assert code == ExitCode.UNSAFE
    assert not (cache / ENTRY).exists()
    assert not any(p.name in ("escaped.txt", "config.json") for p in tmp_path.rglob("*"))  # nothing extracted


def test_not_enough_disk_fails_before_contacting_the_source(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    source = publish_manifest(served, base, random_files({"a.bin": 1000}))
    with pytest.raises(FetchError) as failed:
        fetch(options(source, tmp_path, expected_bytes=2**60), log=quiet)
    assert (
        failed.value.code == ExitCode.DISK and "still to write" in failed.value.reason and "free" in failed.value.reason
    )
    assert served.requests == []


def test_a_bandwidth_cap_and_one_file_at_a_time_still_complete(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    files = random_files({"a.bin": 100_000, "b.bin": 100_000})
    fetch(options(publish_manifest(served, base, files), tmp_path, parallel=1, max_mbps=100.0), log=quiet)
    assert_ready(tmp_path, files)


def test_a_dropped_connection_is_resumed_with_a_range_request_in_the_same_run(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    files = random_files({"w.bin": 1_000_000})
    source = publish_manifest(served, base, files)
    served.cut_once["/m/w.bin"] = 5 * CHUNK
    fetch(options(source, tmp_path, retries=2), log=quiet)
    assert_ready(tmp_path, files)
    assert [r["range"] for r in served.gets("/m/w.bin")] == ["", f"bytes={5 * CHUNK}-"]


def test_a_server_without_range_support_restarts_only_the_partial_file(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    files = random_files({"done.bin": 200_000, "half.bin": 3 * 1024 * 1024})
    source = publish_manifest(served, base, files)
    served.slow["/m/half.bin"] = 0.05
    command = [sys.executable, "-m", "dspool.weights.fetch", "--source", source, "--cache-dir", str(tmp_path)]
    command += ["--entry", ENTRY, "--progress-interval", "0.2"]
    partial = tmp_path / PARTIAL_DIR / ENTRY
    killed = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": OPERATOR_DIR}, stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: "done.bin" in _journaled(partial), "done.bin to be verified")
        half = partial / "half.bin.part"
        _wait_for(lambda: half.exists() and half.stat().st_size >= 1024 * 1024, "1 MiB of half.bin")
    finally:
        killed.kill()
        killed.wait()
    served.slow.clear()
    served.requests.clear()
    served.ranges = False
    fetch(options(source, tmp_path), log=quiet)
    assert_ready(tmp_path, files)
    assert served.gets("/m/done.bin") == []
    assert len(served.gets("/m/half.bin")) == 1 and served.gets("/m/half.bin")[0]["range"].startswith("bytes=")


def test_the_fetch_imports_nothing_outside_the_standard_library() -> None:
    # The operator image is the fetch image and nothing is installed at run time; an air-gapped site mirrors it.
    probe = "import sys, dspool.weights.fetch; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": OPERATOR_DIR}, capture_output=True, text=True
    )
    outside = set(loaded.stdout.split()) - set(sys.stdlib_module_names) - {"dspool", "__main__", "_distutils_hack"}
    assert loaded.returncode == 0 and outside == set(), outside


def test_modelscope_and_unknown_sources_are_refused_with_a_reason(tmp_path: Path) -> None:
    for source, words in (("modelscope://deepseek-ai/DeepSeek-R1", "not supported"), ("ftp://x/y", "unsupported")):
        with pytest.raises(FetchError) as failed:
            fetch(options(source, tmp_path), log=quiet)
        assert failed.value.code == ExitCode.USAGE and words in failed.value.reason


def test_build_manifest_lists_a_directory_as_the_fetch_reads_it(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    origin_dir = tmp_path / "origin"
    files = random_files({"config.json": 500, "sub/w.bin": 300_000})
    for name, body in files.items():
        (origin_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (origin_dir / name).write_bytes(body)
    served.files["/d/dspool-manifest.json"] = json.dumps(build_manifest(origin_dir)).encode()
    for name, body in files.items():
        served.files[f"/d/{name}"] = body
    fetch(options(f"{base}/d/dspool-manifest.json", tmp_path / "cache"), log=quiet)
    assert_ready(tmp_path / "cache", files)


# --- hf:// against a tiny fake hub ------------------------------------------------------------------------------
# The JSON shapes are those huggingface_hub reads: src/huggingface_hub/hf_api.py (``RepoFile``: "path", "size",
# "oid", "lfs": {"oid", "size", "pointerSize"}; ``list_repo_tree``: GET /api/models/{repo}/tree/{revision}
# ?recursive=true; ``model_info``: GET /api/models/{repo}/revision/{revision} -> "sha"),
# src/huggingface_hub/utils/_pagination.py (the ``Link: <...>; rel="next"`` header) and
# src/huggingface_hub/constants.py (``{endpoint}/{repo_id}/resolve/{revision}/{filename}``).

COMMIT = "8a58a132790c5ef4cb3e2e9e5cb2c9d4d1e6e0a1"


def _git_blob_sha1(body: bytes) -> str:
    return hashlib.sha1(f"blob {len(body)}\0".encode() + body).hexdigest()


def publish_hub(served: Served, files: dict[str, bytes], lfs: set[str], cdn: str) -> None:
    """A repository ``org/tiny`` whose ``main`` is COMMIT; LFS files redirect to ``cdn`` (another host name)."""
    repo = "/api/models/org/tiny"
    served.documents[f"{repo}/revision/main"] = (json.dumps({"id": "org/tiny", "sha": COMMIT}).encode(), {})
    items: list[dict[str, Any]] = [{"type": "directory", "oid": "0" * 40, "path": "sub"}]
    for name, body in files.items():
        item: dict[str, Any] = {"type": "file", "oid": _git_blob_sha1(body), "size": len(body), "path": name}
        if name in lfs:
            sha = hashlib.sha256(body).hexdigest()
            item["lfs"] = {"oid": sha, "size": len(body), "pointerSize": 134}
            served.redirects[f"/org/tiny/resolve/{COMMIT}/{name}"] = f"{cdn}/cdn/{sha}"
            served.files[f"/cdn/{sha}"] = body
        else:
            served.files[f"/org/tiny/resolve/{COMMIT}/{name}"] = body
        items.append(item)
    first = f"{repo}/tree/{COMMIT}?recursive=true"
    served.documents[first] = (json.dumps(items[:2]).encode(), {"Link": f'<{first}&cursor=2>; rel="next"'})
    served.documents[f"{first}&cursor=2"] = (json.dumps(items[2:]).encode(), {})


def test_an_hf_source_is_pinned_to_its_commit_listed_across_pages_and_verified(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    files = random_files({"config.json": 700, "sub/model-00001.safetensors": 900_000, "model-00002.safetensors": 500})
    cdn = base.replace("127.0.0.1", "localhost")  # the same server under another name: another host
    publish_hub(served, files, lfs={"sub/model-00001.safetensors", "model-00002.safetensors"}, cdn=cdn)
    env = {"HF_ENDPOINT": base, "HF_TOKEN": "hf_test"}
    fetch(options("hf://org/tiny", tmp_path, env=env, revision="main"), log=quiet)
    marker = assert_ready(tmp_path, files)
    assert marker["resolved_revision"] == COMMIT
    verified = {f["path"]: f["verified"] for f in marker["files"]}
    assert verified == {
        "config.json": "git-blob-sha1",
        "sub/model-00001.safetensors": "sha256",
        "model-00002.safetensors": "sha256",
    }
    api_calls = [r for r in served.requests if r["path"].startswith("/api/")]
    assert len(api_calls) == 3 and all(r["authorization"] == "Bearer hf_test" for r in api_calls)
    cdn_calls = [r for r in served.requests if r["path"].startswith("/cdn/")]
    assert len(cdn_calls) == 2 and all(r["authorization"] == "" for r in cdn_calls)  # the token stays with the hub

    served.corrupt.add(f"/cdn/{hashlib.sha256(files['sub/model-00001.safetensors']).hexdigest()}")
    with pytest.raises(FetchError) as failed:
        fetch(options("hf://org/tiny", tmp_path / "again", env=env, retries=0), log=quiet)
    assert failed.value.code == ExitCode.VERIFY and "sub/model-00001.safetensors" in failed.value.reason


def test_an_hf_source_needs_hf_endpoint(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as failed:
        fetch(options("hf://org/tiny", tmp_path, env={}), log=quiet)
    assert failed.value.code == ExitCode.USAGE and "HF_ENDPOINT" in failed.value.reason


# --- s3:// ---------------------------------------------------------------------------------------------------------


def test_sigv4_matches_the_published_test_vectors() -> None:
    # "get-vanilla" of the AWS Signature Version 4 test suite (aws-sig-v4-test-suite/get-vanilla, as kept in
    # awslabs/aws-c-auth tests/aws-signing-test-suite/v4/get-vanilla), and the GET Object example of the S3 API
    # reference, "Signature Calculations for the Authorization Header" (sig-v4-header-based-auth.html).
    vanilla = sign_v4(
        "GET",
        "https://example.amazonaws.com/",
        {},
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        "us-east-1",
        "service",
        datetime_utc(2015, 8, 30, 12, 36),
    )
    assert vanilla["authorization"].endswith(
        "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    s3 = sign_v4(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        {"Range": "bytes=0-9", "x-amz-content-sha256": hashlib.sha256(b"").hexdigest()},
        Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        "us-east-1",
        "s3",
        datetime_utc(2013, 5, 24, 0, 0),
    )
    assert s3["authorization"].endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def datetime_utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """moto's S3 server in a process of its own (its authentication switch is process-wide)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("boto3")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1):
                return True
        except OSError:
            return process.poll() is not None

    try:
        _wait_for(up, "moto's server")
        assert process.poll() is None, "moto's server did not start"
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_an_s3_prefix_is_fetched_with_signed_requests_that_moto_checks(moto_s3: str, tmp_path: Path) -> None:
    import boto3

    admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin", "region_name": "us-east-1"}
    iam = boto3.client("iam", endpoint_url=moto_s3, **admin)
    iam.create_user(UserName="fetcher")
    key = iam.create_access_key(UserName="fetcher")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="fetcher", PolicyName="s3", PolicyDocument=json.dumps(policy))
    # From here on moto checks every request's signature against the keys it issued.
    reset = urllib.request.Request(
        f"{moto_s3}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}, method="POST"
    )
    urllib.request.urlopen(reset).close()
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="weights")
    files = random_files({"config.json": 900, "model-00001.safetensors": 1_100_000, "sub/tokenizer.json": 5000})
    for name, body in files.items():
        s3.put_object(Bucket="weights", Key=f"deepseek/tiny/{name}", Body=body)
    s3.put_object(Bucket="weights", Key="deepseek/other/x.bin", Body=b"not this prefix")
    manifest = {
        "format": MANIFEST_FORMAT,
        "files": [{"path": "config.json", "size": 900, "sha256": hashlib.sha256(files["config.json"]).hexdigest()}],
    }
    s3.put_object(Bucket="weights", Key="deepseek/tiny/dspool-manifest.json", Body=json.dumps(manifest).encode())

    env = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_ENDPOINT_URL": moto_s3,
    }
    fetch(options("s3://weights/deepseek/tiny", tmp_path, env=env), log=quiet)
    marker = assert_ready(tmp_path, files)
    assert {f["path"]: f["verified"] for f in marker["files"]}["config.json"] == "sha256"

    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(FetchError) as failed:
        fetch(options("s3://weights/deepseek/tiny", tmp_path / "again", env=wrong), log=quiet)
    assert failed.value.code == ExitCode.SOURCE and "HTTP 403" in failed.value.reason


def test_entry_ids_and_paths_that_would_escape_are_refused(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    with pytest.raises(FetchError) as bad_entry:
        fetch(FetchOptions(source=f"{base}/m/manifest.json", cache_dir=tmp_path, entry="../x"), log=quiet)
    assert bad_entry.value.code == ExitCode.USAGE
    manifest = {"format": MANIFEST_FORMAT, "files": [{"path": "../../etc/passwd", "size": 1}]}
    served.files["/m/manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(FetchError) as escaping:
        fetch(options(f"{base}/m/manifest.json", tmp_path), log=quiet)
    assert escaping.value.code == ExitCode.UNSAFE and "../../etc/passwd" in escaping.value.reason
    shutil.rmtree(tmp_path / PARTIAL_DIR, ignore_errors=True)
