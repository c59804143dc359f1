"""URI rules: ``oss://bucket/key`` (no traversal), ``file://`` under roots, public http(s).

Every function here is a gate in front of storage or the network: it refuses before anything
is read or written, and its error message names the URI and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from pipeline.errors import FileTooLarge, ForbiddenURI, InvalidArgument, ObjectNotFound
from pipeline.storage.atomic import write_atomically

# OSS/S3 bucket names. Dots are refused on purpose: IMM rejects endpoint-style
# ``oss://bucket.oss-cn-hangzhou.aliyuncs.com/key`` URIs, and so do we.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1023
MAX_REDIRECTS = 5
ALLOW_PRIVATE_HINT = "set OPENIMM_HTTP_ALLOW_PRIVATE=1 to allow it"


def _split_oss(uri: str) -> tuple[str, str]:
    if not uri.startswith("oss://"):
        raise InvalidArgument(f"Invalid URI {uri!r}: expected oss://<bucket>/<key>.")
    bucket, _, key = uri[len("oss://") :].partition("/")
    if not BUCKET_RE.match(bucket):
        raise InvalidArgument(
            f"Invalid URI {uri!r}: the bucket must be 3-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit (endpoint-style "
            "oss://bucket.oss-<region>.aliyuncs.com URIs are not accepted)."
        )
    return bucket, key


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F  # C0, DEL and C1 controls


def _check_key(uri: str, key: str) -> None:
    """Validate ``key`` (without the trailing '/' a prefix may carry)."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"Invalid URI {uri!r}: the key exceeds {MAX_KEY_BYTES} bytes.")
    if any(_is_control(c) for c in key):
        raise InvalidArgument(f"Invalid URI {uri!r}: control characters are not allowed.")
    if "\\" in key:
        raise InvalidArgument(f"Invalid URI {uri!r}: '\\' is not allowed in keys.")
    # Traversal is ForbiddenURI (a policy refusal), not a mere typo: the local store maps keys
    # onto paths, so '/x', '.' and '..' would otherwise name files outside the bucket.
    if key.startswith("/"):
        raise ForbiddenURI(f"Invalid URI {uri!r}: the key must not start with '/'.")
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        raise ForbiddenURI(f"Invalid URI {uri!r}: '.' and '..' path segments are not allowed.")
    if "" in segments:
        raise InvalidArgument(f"Invalid URI {uri!r}: empty path segments ('//') are not allowed.")


def parse_oss_uri(uri: str) -> tuple[str, str]:
    """``oss://bucket/key`` → ``(bucket, key)``; the key names one object.

    Raises ``ForbiddenURI`` for traversal ('/x', '.', '..') and ``InvalidArgument`` for any
    other malformed URI.
    """
    bucket, key = _split_oss(uri)
    if not key:
        raise InvalidArgument(f"Invalid URI {uri!r}: the object key is empty.")
    _check_key(uri, key)
    return bucket, key


def parse_oss_prefix(uri: str) -> tuple[str, str]:
    """Like :func:`parse_oss_uri`, but the key may be empty or end with '/' (a "directory")."""
    bucket, key = _split_oss(uri)
    if key:
        if key.startswith("/"):  # checked before stripping so 'oss://b//' is traversal too
            raise ForbiddenURI(f"Invalid URI {uri!r}: the key must not start with '/'.")
        _check_key(uri, key.removesuffix("/"))
    return bucket, key


def resolve_file_uri(uri: str, roots: list[Path]) -> Path:
    """``file:///abs/path`` → its real path (symlinks followed), which must lie under a root.

    Existence is not checked here; readers report a missing file themselves.
    """
    parts = urlsplit(uri)
    path_text = unquote(parts.path)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"Invalid URI {uri!r}: expected file:///absolute/path.")
    if not path_text.startswith("/") or "\x00" in path_text or parts.query or parts.fragment:
        raise InvalidArgument(f"Invalid URI {uri!r}: expected file:///absolute/path.")
    path = Path(path_text).resolve()
    for root in roots:
        real_root = root.resolve()  # a root may itself sit behind a symlink
        if path == real_root or real_root in path.parents:
            return path
    raise ForbiddenURI(f"file:// URIs are only allowed under OPENIMM_FILE_ROOTS; {uri!r} is not.")


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, whatever its notation
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global  # also shared space such as 100.64.0.0/10 (carrier NAT)
    )


def check_public_host(host: str, allow_private: bool) -> None:
    """Refuse a host if any of its addresses is private, loopback, link-local, reserved,
    multicast or unspecified, unless ``allow_private`` (``OPENIMM_HTTP_ALLOW_PRIVATE``).

    Raises ``InvalidArgument`` when the host is empty or does not resolve.
    """
    if not host:
        raise InvalidArgument("The URL has no host.")
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        raise InvalidArgument(f"The host {host!r} cannot be resolved.") from None
    if allow_private:
        return
    for info in infos:
        address = str(info[4][0])
        if _is_private(address):
            raise ForbiddenURI(
                f"The host {host!r} resolves to a private address ({address}); "
                f"{ALLOW_PRIVATE_HINT}."
            )


def fetch_http(uri: str, dest: Path, *, max_bytes: int, timeout: float, allow_private: bool) -> int:
    """Download ``uri`` to ``dest`` and return its size in bytes.

    The host is checked before every connection, redirects included (at most
    ``MAX_REDIRECTS``, followed here rather than by httpx so each hop is checked), and the
    address actually connected to is checked again, which defeats DNS rebinding between the
    check and the connect. ``timeout`` bounds the whole download, not each read (a read
    stalled near the end may overrun it by at most ``timeout`` once more). The body is
    written to a temp file renamed onto ``dest``: no partial file remains on failure.
    """
    deadline = time.monotonic() + timeout
    url = uri
    # trust_env=False: through an environment proxy the address checks would be meaningless.
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            _check_http_url(url, uri, allow_private)
            try:
                with client.stream("GET", url, timeout=_remaining(deadline, uri)) as response:
                    _check_peer(response, url, allow_private)
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    _check_status(response, uri)
                    return _save(response, dest, uri, max_bytes, deadline)
            except httpx.TimeoutException:
                raise InvalidArgument(f"Fetching {uri} timed out after {timeout:g} s.") from None
            except httpx.HTTPError as exc:
                raise InvalidArgument(f"Fetching {uri} failed: {exc}") from None
    raise InvalidArgument(f"Fetching {uri} failed: more than {MAX_REDIRECTS} redirects.")


def _check_http_url(url: str, uri: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(
            f"Invalid URL {url!r} (from {uri}): only http and https are supported."
        )
    check_public_host(parts.hostname or "", allow_private)


def _remaining(deadline: float, uri: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpx.TimeoutException(f"deadline passed fetching {uri}")
    return left


def _check_peer(response: httpx.Response, url: str, allow_private: bool) -> None:
    if allow_private:
        return
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if peer and _is_private(str(peer[0])):
        raise ForbiddenURI(
            f"{url} connected to a private address ({peer[0]}); {ALLOW_PRIVATE_HINT}."
        )


def _check_status(response: httpx.Response, uri: str) -> None:
    if response.status_code in (404, 410):
        raise ObjectNotFound(f"Fetching {uri} failed: HTTP {response.status_code}.")
    if response.status_code >= 400:
        raise InvalidArgument(f"Fetching {uri} failed: HTTP {response.status_code}.")


def _declared_size(response: httpx.Response) -> int:
    try:
        return int(response.headers.get("content-length") or 0)
    except ValueError:
        return 0  # a bogus header is no reason to fail: the streamed count is enforced anyway


def _save(response: httpx.Response, dest: Path, uri: str, max_bytes: int, deadline: float) -> int:
    declared = _declared_size(response)
    if declared > max_bytes:
        raise FileTooLarge(f"{uri} is {declared} bytes; the limit is {max_bytes} bytes.")

    def fill(handle: BinaryIO) -> int:
        size = 0
        # No chunk_size: httpx would buffer up to it, and the deadline is checked per chunk.
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FileTooLarge(f"{uri} exceeds the limit of {max_bytes} bytes.")
            _remaining(deadline, uri)  # a slow drip must not outlive the total timeout
            handle.write(chunk)
        return size

    # Not durable: dest is a worker's scratch copy, fetched again if the worker dies.
    return write_atomically(dest, fill, durable=False)
