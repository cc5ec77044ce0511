"""``s3://bucket/prefix`` sources: AWS Signature Version 4 (hmac and hashlib), ListObjectsV2, path-style URLs.

Works with any S3-compatible store (MinIO, Ceph RGW, moto, AWS). The endpoint comes from ``--s3-endpoint``,
else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; credentials from ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (none: anonymous requests, for public buckets).
Signing as specified in "Create a signed AWS API request" (AWS IAM user guide, Signature Version 4).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from dspool.weights.fetch_common import ExitCode, FetchError, RemoteFile, safe_relative
from dspool.weights.fetch_http import Origin

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_UNRESERVED = "-_.~"


@dataclass(frozen=True)
class Credentials:
    """An access key pair (and a session token for temporary credentials)."""

    access_key: str
    secret_key: str
    session_token: str = ""


def _canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    encoded = [(urllib.parse.quote(k, safe=_UNRESERVED), urllib.parse.quote(v, safe=_UNRESERVED)) for k, v in pairs]
    return "&".join(f"{k}={v}" for k, v in sorted(encoded))


def _signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_v4(
    method: str,
    url: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    service: str,
    now: datetime,
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """``headers`` plus ``host``, ``x-amz-date`` (and the session token) and the ``Authorization`` header of
    Signature Version 4. The URL's path must already be URI-encoded (S3 encodes it once)."""
    parts = urllib.parse.urlsplit(url)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = stamp
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            _canonical_query(parts.query),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _signing_key(credentials.secret_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256)
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature.hexdigest()}"
    )
    return signed


@dataclass(frozen=True)
class S3Location:
    """Where an ``s3://`` source is, and how to sign for it."""

    endpoint: str
    bucket: str
    prefix: str
    region: str
    credentials: Credentials | None

    def object_url(self, key: str) -> str:
        """The path-style URL of one object."""
        return f"{self.endpoint}/{urllib.parse.quote(self.bucket)}/{urllib.parse.quote(key, safe='/~')}"

    def signer(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        """Headers for one request (unsigned when there are no credentials)."""
        if self.credentials is None:
            return headers
        with_hash = {**headers, "x-amz-content-sha256": EMPTY_SHA256}
        return sign_v4(method, url, with_hash, self.credentials, self.region, "s3", datetime.now(UTC))


def s3_location(uri: str, endpoint: str | None, env: Mapping[str, str]) -> S3Location:
    """Parse ``s3://bucket/prefix`` and read the endpoint, region and credentials."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.netloc:
        raise FetchError(ExitCode.USAGE, f"an s3 source needs a bucket: {uri!r} (s3://bucket/prefix)")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    chosen = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    prefix = parts.path.lstrip("/")
    access, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    return S3Location(
        endpoint=(chosen or f"https://s3.{region}.amazonaws.com").rstrip("/"),
        bucket=parts.netloc,
        prefix=prefix if not prefix or prefix.endswith("/") else f"{prefix}/",
        region=region,
        credentials=Credentials(access, secret, env.get("AWS_SESSION_TOKEN", "")) if access and secret else None,
    )


def _list_page(origin: Origin, location: S3Location, token: str) -> tuple[list[tuple[str, int]], str]:
    query = {"list-type": "2", "prefix": location.prefix}
    if token:
        query["continuation-token"] = token
    url = f"{location.endpoint}/{urllib.parse.quote(location.bucket)}?{urllib.parse.urlencode(query)}"
    body = origin.read(url, f"listing s3://{location.bucket}/{location.prefix}")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        raise FetchError(ExitCode.SOURCE, f"listing s3://{location.bucket}: not a ListObjectsV2 reply") from error
    objects = [
        (item.findtext(f"{_S3_NS}Key", ""), int(item.findtext(f"{_S3_NS}Size", "0")))
        for item in root.iter(f"{_S3_NS}Contents")
    ]
    truncated = root.findtext(f"{_S3_NS}IsTruncated", "false") == "true"
    return objects, root.findtext(f"{_S3_NS}NextContinuationToken", "") if truncated else ""


def list_s3(origin: Origin, location: S3Location) -> list[RemoteFile]:
    """Every object under the prefix (folder markers skipped), with its size, as files of the entry."""
    files: list[RemoteFile] = []
    token = ""
    while True:
        objects, token = _list_page(origin, location, token)
        for key, size in objects:
            relative = key[len(location.prefix) :]
            if not relative or key.endswith("/"):
                continue
            safe_relative(relative)
            files.append(RemoteFile(path=relative, url=location.object_url(key), size=size))
        if not token:
            break
    if not files:
        raise FetchError(ExitCode.SOURCE, f"no objects under s3://{location.bucket}/{location.prefix}")
    return files
