"""Request authentication: the ACS3-HMAC-SHA256 signature of the official Alibaba Cloud SDKs.

The SDK signs: ``METHOD\\n/path\\ncanonical-query\\ncanonical-headers\\nsigned-headers\\n
hex(sha256(body))``; the string to sign is ``ACS3-HMAC-SHA256\\nhex(sha256(canonical))`` and the
signature is ``hex(hmac_sha256(secret, string_to_sign))``. We rebuild the canonical request from
what arrived and compare in constant time. The caller's AccessKeyId is its owner identity.

Beyond the arithmetic, a signature only protects what it covers, so ``host``, ``x-acs-date``,
``x-acs-content-sha256`` and ``x-acs-signature-nonce`` must always be signed, and every other
header the server acts on must be signed when present: ``x-acs-action`` and ``x-acs-version``
(an ``Action`` query parameter is covered by the canonical query, a form-body one by the body
hash) and ``content-type`` when there is a body (it decides whether the body is read as
parameters). A header that arrived more than once is never accepted as signed. The official
SDK signs every header it sends, so it satisfies all of this. The nonce makes each signature
unique: the API's replay cache accepts a signature once within its validity window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from pipeline.errors import (
    AuthNotConfigured,
    InvalidAccessKeyId,
    InvalidTimestamp,
    MissingAuthorization,
    SignatureDoesNotMatch,
)

ALGORITHM = "ACS3-HMAC-SHA256"
# Large object uploads are streamed, so (as in S3) their body hash may be left unsigned.
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEV_OWNER = "dev"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
ALWAYS_SIGNED = ("host", "x-acs-date", "x-acs-content-sha256", "x-acs-signature-nonce")
SIGNED_WHEN_PRESENT = ("x-acs-action", "x-acs-version")


@dataclass(frozen=True)
class SignedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    # A body streamed after verification (object uploads) is not in ``body``: its declared
    # x-acs-content-sha256 is signed as is, and the receiver hashes the bytes as they arrive.
    streamed: bool = False
    repeated: frozenset[str] = frozenset()  # header names that arrived more than once


def anonymous_owner(keys: Mapping[str, str], dev_mode: bool) -> str | None:
    """The owner of unsigned requests: ``DEV_OWNER`` only in explicit dev mode without keys.
    None when requests must be signed. No keys without dev mode is never open: refused."""
    if keys:
        return None
    if dev_mode:
        return DEV_OWNER
    raise AuthNotConfigured()


def canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(f"{k}={quote(query[k], safe='~')}" for k in sorted(query))


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    if not value.startswith(ALGORITHM + " "):
        raise SignatureDoesNotMatch(f"Only {ALGORITHM} Authorization is supported.")
    fields: dict[str, str] = {}
    for part in value[len(ALGORITHM) + 1 :].split(","):
        key, _, val = part.strip().partition("=")
        fields[key] = val
    try:
        return fields["Credential"], fields["SignedHeaders"].split(";"), fields["Signature"]
    except KeyError:
        raise SignatureDoesNotMatch("The Authorization header is malformed.") from None


def string_to_sign(request: SignedRequest, signed_headers: list[str]) -> str:
    canonical_headers = "".join(
        f"{name}:{request.headers.get(name, '').strip()}\n" for name in signed_headers
    )
    payload_hash = _payload_hash(request)
    canonical = "\n".join(
        [
            request.method.upper(),
            request.path or "/",
            canonical_query(request.query),
            canonical_headers,
            ";".join(signed_headers),
            payload_hash,
        ]
    )
    return f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def sign(request: SignedRequest, key_id: str, secret: str, signed_headers: list[str]) -> str:
    """The Authorization header value for ``request`` (used by the openimm CLI client)."""
    digest = hmac.new(
        secret.encode(), string_to_sign(request, signed_headers).encode(), hashlib.sha256
    ).hexdigest()
    names = ";".join(signed_headers)
    return f"{ALGORITHM} Credential={key_id},SignedHeaders={names},Signature={digest}"


def _payload_hash(request: SignedRequest) -> str:
    declared = request.headers.get("x-acs-content-sha256", "")
    if declared == UNSIGNED_PAYLOAD or (request.streamed and SHA256_HEX.match(declared)):
        return declared
    return hashlib.sha256(request.body).hexdigest()


def _check_date(headers: Mapping[str, str], now: datetime, max_skew: int) -> None:
    raw = headers.get("x-acs-date", "")
    try:
        when = datetime.strptime(raw, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidTimestamp("The x-acs-date header is missing or malformed.") from None
    if abs((now - when).total_seconds()) > max_skew:
        raise InvalidTimestamp(
            f"The request time {raw} is more than {max_skew} s away from the server time."
        )


def precheck(
    headers: Mapping[str, str], keys: Mapping[str, str], *, now: datetime, max_skew: int
) -> tuple[str, list[str], str]:
    """The checks that need no body (run before reading it): an Authorization header naming a
    known key, the mandatory headers signed, a fresh date. Returns (key id, signed headers,
    signature)."""
    header = headers.get("authorization", "")
    if not header:
        raise MissingAuthorization()
    key_id, signed_headers, signature = _parse_authorization(header)
    if key_id not in keys:
        raise InvalidAccessKeyId(f"The specified AccessKeyId {key_id} is not found.")
    missing = [name for name in ALWAYS_SIGNED if name not in signed_headers]
    missing += [n for n in SIGNED_WHEN_PRESENT if n in headers and n not in signed_headers]
    if missing:
        raise SignatureDoesNotMatch(f"These headers must be signed: {', '.join(missing)}.")
    _check_date(headers, now, max_skew)
    return key_id, signed_headers, signature


def verify(
    request: SignedRequest,
    keys: Mapping[str, str],
    *,
    now: datetime,
    max_skew: int,
    allow_unsigned_payload: bool = False,
) -> str:
    """Return the caller's AccessKeyId, or raise an ``AuthError``."""
    key_id, signed_headers, signature = precheck(request.headers, keys, now=now, max_skew=max_skew)
    if request.body and "content-type" in request.headers and "content-type" not in signed_headers:
        raise SignatureDoesNotMatch("content-type must be signed when there is a body.")
    twice = request.repeated.intersection(signed_headers)
    if twice:
        raise SignatureDoesNotMatch(f"Signed headers sent more than once: {', '.join(twice)}.")
    declared = request.headers.get("x-acs-content-sha256")
    if declared == UNSIGNED_PAYLOAD and not allow_unsigned_payload:
        raise SignatureDoesNotMatch("UNSIGNED-PAYLOAD is only accepted for object uploads.")
    if declared != UNSIGNED_PAYLOAD and declared != _payload_hash(request):
        raise SignatureDoesNotMatch("x-acs-content-sha256 does not match the request body.")
    expected = sign(request, key_id, keys[key_id], signed_headers).rsplit("Signature=", 1)[1]
    if not hmac.compare_digest(expected, signature):
        raise SignatureDoesNotMatch(
            "The request signature does not conform to Aliyun standards (ACS3-HMAC-SHA256)."
        )
    return key_id


def replay_key(headers: Mapping[str, str]) -> str:
    """What identifies one signed request for the replay cache: its signature (it covers the
    signed nonce and date)."""
    return "acs3:" + _parse_authorization(headers.get("authorization", ""))[2]
