"""URI rules: ``oss://bucket/key`` (no traversal), ``file://`` under roots, public http(s)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from pipeline.errors import FileTooLarge, ForbiddenURI, InvalidArgument

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1023
MAX_REDIRECTS = 5
CHUNK = 1 << 16


def _split_oss(uri: str) -> tuple[str, str]:
    if not uri.startswith("oss://"):
        raise InvalidArgument(f"Invalid URI {uri!r}: expected oss://<bucket>/<key>.")
    bucket, _, key = uri[len("oss://") :].partition("/")
    if not BUCKET_RE.match(bucket):
        raise InvalidArgument(
            f"Invalid URI {uri!r}: the bucket must be 3-63 lowercase letters, digits or '-' "
            "(endpoint-style oss://bucket.oss-<region>.aliyuncs.com URIs are not accepted)."
        )
    return bucket, key


def _check_key(uri: str, key: str) -> None:
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"Invalid URI {uri!r}: the key exceeds {MAX_KEY_BYTES} bytes.")
    if any(ord(c) < 32 or ord(c) == 127 for c in key) or "\\" in key:
        raise InvalidArgument(f"Invalid URI {uri!r}: control characters and '\\' are not allowed.")
    segments = key.split("/")
    if any(s in (".", "..") for s in segments) or key.startswith("/"):
        raise ForbiddenURI(f"Invalid URI {uri!r}: '.', '..' and absolute paths are not allowed.")
    if "" in segments:
        raise InvalidArgument(f"Invalid URI {uri!r}: empty path segments are not allowed.")


def parse_oss_uri(uri: str) -> tuple[str, str]:
    """``oss://bucket/key`` → (bucket, key); the key names one object."""
    bucket, key = _split_oss(uri)
    if not key:
        raise InvalidArgument(f"Invalid URI {uri!r}: the object key is empty.")
    _check_key(uri, key)
    return bucket, key


def parse_oss_prefix(uri: str) -> tuple[str, str]:
    """Like :func:`parse_oss_uri` but the key may be empty or end with '/' (a "directory")."""
    bucket, key = _split_oss(uri)
    if key:
        _check_key(uri, key.removesuffix("/"))
    return bucket, key


def resolve_file_uri(uri: str, roots: list[Path]) -> Path:
    """``file:///abs/path`` → the real path, which must lie under a configured root."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"Invalid URI {uri!r}: expected file:///absolute/path.")
    path = Path(unquote(parts.path)).resolve()
    for root in roots:
        if path == root or root in path.parents:
            return path
    raise ForbiddenURI(f"file:// URIs are only allowed under OPENIMM_FILE_ROOTS; {uri!r} is not.")


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def check_public_host(host: str, allow_private: bool) -> None:
    """Refuse hosts that resolve to private, loopback, link-local or reserved addresses."""
    if not host:
        raise InvalidArgument("The URL has no host.")
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise InvalidArgument(f"The host {host!r} cannot be resolved.") from None
    if allow_private:
        return
    for info in infos:
        if _is_private(str(info[4][0])):
            raise ForbiddenURI(
                f"The host {host!r} resolves to a private address ({info[4][0]}); set "
                "OPENIMM_HTTP_ALLOW_PRIVATE=1 to allow it."
            )


def fetch_http(uri: str, dest: Path, *, max_bytes: int, timeout: float, allow_private: bool) -> int:
    """Download ``uri`` to ``dest`` within limits; no partial file remains on failure."""
    url = uri
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise InvalidArgument(f"Invalid URL {url!r}: only http and https are supported.")
            check_public_host(parts.hostname or "", allow_private)
            with client.stream("GET", url) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code >= 400:
                    raise InvalidArgument(
                        f"Fetching {uri} failed with HTTP {response.status_code}."
                    )
                return _save(response, dest, uri, max_bytes)
    raise InvalidArgument(f"Too many redirects fetching {uri}.")


def _save(response: httpx.Response, dest: Path, uri: str, max_bytes: int) -> int:
    declared = int(response.headers.get("content-length") or 0)
    if declared > max_bytes:
        raise FileTooLarge(f"{uri} is {declared} bytes; the limit is {max_bytes}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".openimm-tmp-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in response.iter_bytes(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"{uri} exceeds the limit of {max_bytes} bytes.")
                handle.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size
