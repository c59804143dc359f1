"""URI rules: ``oss://bucket/key`` (no traversal), ``file://`` under roots, public http(s).

Every function here is a gate in front of storage or the network: it refuses before anything
is read or written, and its error message names the URI and what is wrong with it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import urllib3

from pipeline import netpolicy
from pipeline.errors import FileTooLarge, ForbiddenURI, ImmError, InvalidArgument, ObjectNotFound
from pipeline.storage.atomic import write_atomically

# OSS/S3 bucket names. Dots are refused on purpose: IMM rejects endpoint-style
# ``oss://bucket.oss-cn-hangzhou.aliyuncs.com/key`` URIs, and so do we.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1023
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 16
MAX_CAUSES = 8  # how deep an exception chain is searched for the reason of a failure


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


def check_public_host(host: str, allow_private: bool) -> None:
    """Refuse a host if any of its addresses is private, loopback, link-local, reserved,
    multicast or unspecified, unless ``allow_private`` (``OPENIMM_HTTP_ALLOW_PRIVATE``).

    Raises ``InvalidArgument`` when the host is empty or does not resolve. URLs are checked
    with ``netpolicy.check_url``, which also parses them; this is the host-only half.
    """
    netpolicy.resolve(host, 0, allow_private)


def fetch_http(uri: str, dest: Path, *, max_bytes: int, timeout: float, allow_private: bool) -> int:
    """Download ``uri`` to ``dest`` and return its size in bytes.

    Every hop, redirects included (at most ``MAX_REDIRECTS``, followed here so each is
    checked), is parsed by ``netpolicy``, resolved, checked and connected to the checked
    address; the socket's peer is checked before the request is sent, so DNS rebinding
    cannot reach a private address and nothing is read from one. ``timeout`` bounds the
    whole download, not each read (a read stalled near the end may overrun it by at most
    ``timeout`` once more). The body is written to a temp file renamed onto ``dest``: no
    partial file remains on failure.
    """
    deadline = time.monotonic() + timeout
    url = uri
    http = netpolicy.PinnedHTTP(
        allow_private=allow_private, maxsize=1, timeout=urllib3.Timeout(total=timeout)
    )
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = _target(url, uri)
            response = _get(http, target, uri, deadline, timeout)
            try:
                if response.status in REDIRECTS and response.headers.get("location"):
                    url = urljoin(target.url, response.headers["location"])
                    response.close()  # its body is never read: the connection is not reused
                    continue
                _check_status(response.status, uri)
                return _save(response, dest, uri, max_bytes, deadline, timeout)
            finally:
                response.release_conn()
    finally:
        http.clear()
    raise InvalidArgument(f"Fetching {uri} failed: more than {MAX_REDIRECTS} redirects.")


def _target(url: str, uri: str) -> netpolicy.HttpTarget:
    try:
        return netpolicy.parse_http_url(url)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc.message} (fetching {uri})") from None


def _get(
    http: netpolicy.PinnedHTTP,
    target: netpolicy.HttpTarget,
    uri: str,
    deadline: float,
    timeout: float,
) -> urllib3.BaseHTTPResponse:
    left = _remaining(deadline, uri, timeout)
    try:
        return http.request(
            "GET", target, preload_content=False, timeout=urllib3.Timeout(total=left)
        )
    except urllib3.exceptions.HTTPError as exc:
        raise _http_error(exc, target, uri, timeout) from None


def _http_error(
    exc: urllib3.exceptions.HTTPError, target: netpolicy.HttpTarget, uri: str, timeout: float
) -> ImmError:
    cause: BaseException | None = exc
    for _ in range(MAX_CAUSES):
        if cause is None:
            break
        if isinstance(cause, netpolicy.ForbiddenPeer):
            return ForbiddenURI(
                f"{target.url} connected to a private address; {netpolicy.ALLOW_PRIVATE_HINT}."
            )
        # NewConnectionError derives from TimeoutError, but "refused" is no timeout.
        timed_out = isinstance(cause, urllib3.exceptions.TimeoutError)
        if timed_out and not isinstance(cause, urllib3.exceptions.NewConnectionError):
            return InvalidArgument(f"Fetching {uri} timed out after {timeout:g} s.")
        cause = cause.__cause__ or cause.__context__ or getattr(cause, "reason", None)
    return InvalidArgument(f"Fetching {uri} failed: {exc}")


def _remaining(deadline: float, uri: str, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise InvalidArgument(f"Fetching {uri} timed out after {timeout:g} s.")
    return left


def _check_status(status: int, uri: str) -> None:
    if status in (404, 410):
        raise ObjectNotFound(f"Fetching {uri} failed: HTTP {status}.")
    if status >= 400:
        raise InvalidArgument(f"Fetching {uri} failed: HTTP {status}.")


def _declared_size(response: urllib3.BaseHTTPResponse) -> int:
    try:
        return int(response.headers.get("content-length") or 0)
    except ValueError:
        return 0  # a bogus header is no reason to fail: the streamed count is enforced anyway


def _save(
    response: urllib3.BaseHTTPResponse,
    dest: Path,
    uri: str,
    max_bytes: int,
    deadline: float,
    timeout: float,
) -> int:
    declared = _declared_size(response)
    if declared > max_bytes:
        raise FileTooLarge(f"{uri} is {declared} bytes; the limit is {max_bytes} bytes.")

    def fill(handle: BinaryIO) -> int:
        size = 0
        while True:
            # read1: whatever has arrived, so the deadline is checked per network read.
            try:
                chunk = response.read1(CHUNK)
            except urllib3.exceptions.HTTPError as exc:
                raise InvalidArgument(f"Fetching {uri} failed: {exc}") from None
            if not chunk:
                return size
            size += len(chunk)
            if size > max_bytes:
                raise FileTooLarge(f"{uri} exceeds the limit of {max_bytes} bytes.")
            _remaining(deadline, uri, timeout)  # a slow drip must not outlive the timeout
            handle.write(chunk)

    # Not durable: dest is a worker's scratch copy, fetched again if the worker dies.
    return write_atomically(dest, fill, durable=False)
