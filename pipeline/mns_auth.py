"""MNS request signatures: ``Authorization: MNS <AccessKeyId>:<base64 HMAC-SHA1>`` over
``METHOD\\nContent-MD5\\nContent-Type\\nDate\\n`` + sorted ``x-mns-*`` headers + resource
(path and query as sent), as the aliyun-mns-sdk computes it."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from pipeline.errors import (
    InvalidAccessKeyId,
    InvalidTimestamp,
    MissingAuthorization,
    SignatureDoesNotMatch,
)


def string_to_sign(method: str, headers: Mapping[str, str], resource: str) -> str:
    mns = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers) if k.startswith("x-mns-"))
    return (
        f"{method}\n{headers.get('content-md5', '')}\n{headers.get('content-type', '')}\n"
        f"{headers.get('date', '')}\n{mns}{resource}"
    )


def sign(secret: str, method: str, headers: Mapping[str, str], resource: str) -> str:
    digest = hmac.new(
        secret.encode(), string_to_sign(method, headers, resource).encode(), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode()


def verify(
    method: str,
    headers: Mapping[str, str],
    resource: str,
    keys: Mapping[str, str],
    *,
    now: datetime,
    max_skew: int,
) -> str:
    """Return the caller's AccessKeyId (``headers`` with lower-case names)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("MNS ") or ":" not in auth:
        raise MissingAuthorization(
            "An 'Authorization: MNS <AccessKeyId>:<Signature>' header is required."
        )
    key_id, _, signature = auth[4:].partition(":")
    secret = keys.get(key_id)
    if secret is None:
        raise InvalidAccessKeyId(f"The specified AccessKeyId {key_id} is not found.")
    try:
        when = parsedate_to_datetime(headers.get("date", ""))
    except (TypeError, ValueError):
        raise InvalidTimestamp("The Date header is missing or malformed.") from None
    if when.tzinfo is None:  # "-0000" or no zone at all: not a time we can compare
        raise InvalidTimestamp("The Date header must be in GMT (RFC 1123).")
    if abs((now - when).total_seconds()) > max_skew:
        raise InvalidTimestamp("The Date header is too far from the server time.")
    if not hmac.compare_digest(sign(secret, method, headers, resource), signature):
        raise SignatureDoesNotMatch("The MNS signature does not match.")
    return key_id
