"""Outbound HTTP policy: the one parser and the one sender for every URL openimm reaches out to
(webhook endpoints, http(s) task inputs, their redirects).

Two defences against server-side request forgery:
- **One strict parser.** Validators and senders use the same ``HttpTarget``, so a URL cannot
  mean one host to the check and another to the HTTP library (``http://127.0.0.1\\@public/``).
  Anything two parsers could read differently is refused rather than interpreted: userinfo,
  backslashes, control characters, spaces, non-ASCII (IDNA-encode the host), ``%`` in the
  authority, odd ports, non-canonical numeric hosts (``0x7f.1``, ``2130706433``).
- **A pinned connection.** The host is resolved once per attempt, every address is checked
  (private, loopback, link-local, … are refused unless ``OPENIMM_HTTP_ALLOW_PRIVATE``) and
  the connection goes to the checked address (Host header, SNI and certificate checks use
  the name). The socket's peer is checked again before a byte is sent, so DNS rebinding
  between the check and the connect cannot reach a private address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from pipeline.errors import ForbiddenURI, InvalidArgument

ALLOW_PRIVATE_HINT = "set OPENIMM_HTTP_ALLOW_PRIVATE=1 to allow it"
URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)$")
LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
PORT_RE = re.compile(r"^[0-9]{1,5}$")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192
MAX_HOST_LENGTH = 253
MAX_POOLS = 64  # distinct (scheme, address, port, name) connection pools kept alive
PARSED_CACHE = 4096  # parsed endpoint URLs kept (webhook endpoints repeat on every POST)


@dataclass(frozen=True)
class HttpTarget:
    """A parsed, unambiguous http(s) URL: what the checks see is what is connected to."""

    url: str
    scheme: str
    host: str  # lower-case ASCII name, or an IP literal without brackets
    port: int
    target: str  # request target: path and query, at least "/"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        return _ip(self.host) is not None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _refuse(url: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid URL {url[:200]!r}: {why}.")


@functools.lru_cache(maxsize=PARSED_CACHE)
def parse_http_url(url: str) -> HttpTarget:
    """``url`` as an ``HttpTarget``; ``InvalidArgument`` for anything but a plain
    ``http(s)://host[:port]/path?query`` (the fragment, never sent, is dropped).

    Cached: a pure function of ``url``, on the delivery hot path once per POST."""
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(url, f"longer than {MAX_URL_LENGTH} characters")
    if any(not 0x21 <= ord(c) <= 0x7E for c in url):
        raise _refuse(url, "spaces, control and non-ASCII characters are not allowed")
    if "\\" in url:
        raise _refuse(url, "'\\' is not allowed")
    match = URL_RE.match(url)
    scheme = match["scheme"].lower() if match else ""
    if match is None or scheme not in DEFAULT_PORTS:
        raise _refuse(url, "only http and https are supported")
    authority = match["authority"]
    if "@" in authority:
        raise _refuse(url, "user information ('user@') is not allowed")
    if "%" in authority:
        raise _refuse(url, "'%' is not allowed in the host")
    host, port = _split_authority(url, authority, DEFAULT_PORTS[scheme])
    path, _, _fragment = match["rest"].partition("#")
    target = path if path.startswith("/") else "/" + path
    return HttpTarget(url=url, scheme=scheme, host=host, port=port, target=target)


def _split_authority(url: str, authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or not isinstance(_ip(host), ipaddress.IPv6Address):
            raise _refuse(url, "invalid IPv6 literal")
        if port_text and not port_text.startswith(":"):
            raise _refuse(url, "invalid port")
        port_text = port_text[1:] if port_text else None  # type: ignore[assignment]
    else:
        host, colon, port_text = authority.partition(":")
        port_text = port_text if colon else None  # type: ignore[assignment]
        host = _check_name(url, host.lower())
    return host, _port(url, port_text, default_port)


def _check_name(url: str, host: str) -> str:
    if not host or len(host) > MAX_HOST_LENGTH:
        raise _refuse(url, "the host is empty or too long")
    labels = host.split(".")
    if not all(LABEL_RE.match(label) for label in labels):
        raise _refuse(url, "the host must be an (IDNA-encoded) DNS name or an IP address")
    # A numeric last label is no TLD: it must then be a plain dotted IPv4 address, never one
    # of the forms resolvers read differently (0x7f.1, 017.0.0.1, 127.1, 2130706433).
    last = labels[-1]
    if (last.isdigit() or last.startswith("0x")) and not isinstance(
        _ip(host), ipaddress.IPv4Address
    ):
        raise _refuse(url, "a numeric host must be a dotted-decimal IPv4 address")
    return host


def _port(url: str, text: str | None, default: int) -> int:
    if text is None:
        return default
    if not PORT_RE.match(text) or not 1 <= int(text) <= 65535:
        raise _refuse(url, "the port must be a number from 1 to 65535")
    return int(text)


def is_private(address: str) -> bool:
    """True unless ``address`` is a global unicast address."""
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


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses of ``host``, each checked; ``ForbiddenURI`` if any is private (unless
    ``allow_private``), ``InvalidArgument`` if it does not resolve."""
    if not host:
        raise InvalidArgument("The URL has no host.")
    if _ip(host) is not None:  # a literal: nothing to look up
        return _checked_addresses(host, [host], allow_private)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidArgument(f"The host {host!r} cannot be resolved.") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise InvalidArgument(f"The host {host!r} cannot be resolved.")
    return _checked_addresses(host, addresses, allow_private)


def _checked_addresses(host: str, addresses: list[str], allow_private: bool) -> list[str]:
    for address in addresses:
        if not allow_private and is_private(address):
            raise ForbiddenURI(
                f"The host {host!r} resolves to a private address ({address}); "
                f"{ALLOW_PRIVATE_HINT}."
            )
    return addresses


def check_url(url: str, allow_private: bool) -> HttpTarget:
    """Validation-time check of an http(s) URL (webhook endpoints, task inputs): parsed
    strictly and its host resolved and checked, exactly as the sender will do."""
    target = parse_http_url(url)
    resolve(target.host, target.port, allow_private)
    return target


class ForbiddenPeer(urllib3.exceptions.NewConnectionError):
    """The socket connected to an address the policy refuses (nothing was sent)."""


def _checked(base: type[HTTPConnection], allow_private: bool) -> type[HTTPConnection]:
    def _new_conn(self: HTTPConnection) -> socket.socket:
        sock = base._new_conn(self)
        peer = str(sock.getpeername()[0])
        if not allow_private and is_private(peer):
            sock.close()
            raise ForbiddenPeer(self, f"connected to a private address ({peer})")
        return sock

    return type(f"Checked{base.__name__}", (base,), {"_new_conn": _new_conn})


class PinnedHTTP:
    """A urllib3 client that only talks to checked, pinned addresses.

    Connection pools are kept per (scheme, address, port, TLS name), the most recently used
    ``MAX_POOLS`` of them, so keep-alive connections are reused across requests exactly as
    with a plain ``PoolManager``; only the name → address step moved here. No redirects, no
    retries, no proxy.
    """

    def __init__(self, *, allow_private: bool, maxsize: int, timeout: urllib3.Timeout) -> None:
        self.allow_private = allow_private
        self.maxsize, self.timeout = maxsize, timeout
        self._http_conn = _checked(HTTPConnection, allow_private)
        self._https_conn = _checked(HTTPSConnection, allow_private)
        self._pools: OrderedDict[tuple[str, str, int, str], HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str | HttpTarget,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> urllib3.BaseHTTPResponse:
        """One request to ``url``: parsed, resolved, checked, sent to the checked address.
        ``kwargs`` go to urllib3's ``urlopen`` (``timeout``, ``preload_content``)."""
        target = parse_http_url(url) if isinstance(url, str) else url
        address = resolve(target.host, target.port, self.allow_private)[0]
        pool = self._pool(target, address)
        return pool.urlopen(
            method,
            target.target,
            body=body,
            headers={**(headers or {}), "Host": target.host_header},
            redirect=False,
            assert_same_host=False,
            retries=False,
            **kwargs,
        )

    def _pool(self, target: HttpTarget, address: str) -> HTTPConnectionPool:
        tls_name = target.host if target.scheme == "https" and not target.is_ip else ""
        key = (target.scheme, address, target.port, tls_name)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = self._new_pool(target.scheme, address, target.port, tls_name)
            self._pools[key] = pool
            if len(self._pools) > MAX_POOLS:
                self._pools.popitem(last=False)[1].close()  # in-flight requests finish
        return pool

    def _new_pool(self, scheme: str, address: str, port: int, tls_name: str) -> Any:
        common: dict[str, Any] = {"maxsize": self.maxsize, "timeout": self.timeout}
        if scheme == "http":
            pool = HTTPConnectionPool(address, port, retries=False, **common)
            pool.ConnectionCls = self._http_conn
            return pool
        # SNI and the certificate check use the name; the socket goes to the checked address.
        tls = HTTPSConnectionPool(
            address,
            port,
            retries=False,
            assert_hostname=tls_name or None,
            server_hostname=tls_name or None,
            **common,
        )
        tls.ConnectionCls = self._https_conn  # type: ignore[assignment]
        return tls

    def clear(self) -> None:
        """Close every pool (and its idle connections)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()
