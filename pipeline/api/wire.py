"""One parsed view of a request's head, built once and read by both the router and the
signature verifier, so the two can never disagree about a value.

Why: Starlette's ``request.headers.get`` returns the *first* of repeated headers and a dict
built from them keeps the *last*; a captured, validly signed request re-sent with an extra
``x-acs-action`` then ran one action and verified another. Here a header that decides what a
request does or how it is authenticated (``authorization``, ``host``, ``date``, ``content-*``,
``x-acs-*``, ``x-mns-*``) may appear once; a repeated query parameter is refused the same way.
Other repeated headers are joined with ``", "`` (RFC 9110 list semantics) and named in
``repeated``, and the verifiers refuse a signature over any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request

from pipeline.errors import AmbiguousRequest

SINGLE_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "date",
        "content-type",
        "content-md5",
        "content-length",
        "content-encoding",
        "transfer-encoding",
    }
)
SINGLE_PREFIXES = ("x-acs-", "x-mns-")


@dataclass(frozen=True)
class RequestView:
    method: str
    path: str  # percent-decoded (the ACS3 canonical URI)
    resource: str  # path and query exactly as sent (what MNS signs)
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names, one value each
    repeated: frozenset[str]  # header names that arrived more than once (joined values)


def view(request: Request) -> RequestView:
    """Parse the head of ``request`` once; raise ``AmbiguousRequest`` on a duplicate."""
    scope = request.scope
    headers, repeated = _headers(scope["headers"])
    raw_query = scope.get("query_string", b"").decode("latin-1")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return RequestView(
        method=scope["method"],
        path=scope["path"],
        resource=raw_path.decode("latin-1") + (f"?{raw_query}" if raw_query else ""),
        query=unique_pairs(raw_query, "query parameter"),
        headers=headers,
        repeated=frozenset(repeated),
    )


def unique_pairs(text: str, what: str) -> dict[str, str]:
    """``a=1&b=2`` as a dict; a name given twice is refused rather than silently resolved."""
    pairs: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in pairs:
            raise AmbiguousRequest(f"The {what} {name} is given more than once.")
        pairs[name] = value
    return pairs


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], set[str]]:
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name not in headers:
            headers[name] = value
            continue
        if name in SINGLE_HEADERS or name.startswith(SINGLE_PREFIXES):
            raise AmbiguousRequest(f"The header {name} is given more than once.")
        headers[name] += ", " + value
        repeated.add(name)
    return headers, repeated
