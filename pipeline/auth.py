"""Request authentication: the ACS3-HMAC-SHA256 signature of the official Alibaba Cloud SDKs.

The SDK signs: ``METHOD\\n/path\\ncanonical-query\\ncanonical-headers\\nsigned-headers\\n
hex(sha256(body))``; the string to sign is ``ACS3-HMAC-SHA256\\nhex(sha256(canonical))`` and the
signature is ``hex(hmac_sha256(secret, string_to_sign))``. We rebuild the canonical request from
what arrived and compare in constant time. The caller's AccessKeyId is its owner identity.
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


def verify(
    request: SignedRequest,
    keys: Mapping[str, str],
    *,
    now: datetime,
    max_skew: int,
    allow_unsigned_payload: bool = False,
) -> str:
    """Return the caller's AccessKeyId, or raise an ``AuthError``."""
    header = request.headers.get("authorization", "")
    if not header:
        raise MissingAuthorization()
    key_id, signed_headers, signature = _parse_authorization(header)
    secret = keys.get(key_id)
    if secret is None:
        raise InvalidAccessKeyId(f"The specified AccessKeyId {key_id} is not found.")
    required = {"host", "x-acs-date", "x-acs-content-sha256"}
    if not required.issubset(signed_headers):
        raise SignatureDoesNotMatch("host, x-acs-date and x-acs-content-sha256 must be signed.")
    declared = request.headers.get("x-acs-content-sha256")
    if declared == UNSIGNED_PAYLOAD and not allow_unsigned_payload:
        raise SignatureDoesNotMatch("UNSIGNED-PAYLOAD is only accepted for object uploads.")
    if declared != UNSIGNED_PAYLOAD and declared != _payload_hash(request):
        raise SignatureDoesNotMatch("x-acs-content-sha256 does not match the request body.")
    _check_date(request.headers, now, max_skew)
    expected = sign(request, key_id, secret, signed_headers).rsplit("Signature=", 1)[1]
    if not hmac.compare_digest(expected, signature):
        raise SignatureDoesNotMatch(
            "The request signature does not conform to Aliyun standards (ACS3-HMAC-SHA256)."
        )
    return key_id
