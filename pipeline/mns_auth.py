"""MNS request signatures: ``Authorization: MNS <AccessKeyId>:<base64 HMAC-SHA1>`` over
``METHOD\\nContent-MD5\\nContent-Type\\nDate\\n`` + sorted ``x-mns-*`` headers + resource
(path and query as sent), as the aliyun-mns-sdk computes it.

The signature covers the body only through ``Content-MD5``, so it is compared with the body:
required whenever there is a body (the SDK always sends it then), in the SDK's form
(base64 of the *hex* MD5) or RFC 1864's (base64 of the raw digest). The scheme has no nonce:
the signature itself (over Date, to the second, and the body MD5) is the replay key."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from pipeline.errors import (
    InvalidAccessKeyId,
    InvalidArgument,
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


def content_md5_forms(body: bytes) -> tuple[str, str]:
    """The Content-MD5 values accepted for ``body``: the aliyun-mns-sdk's base64(hex MD5)
    and RFC 1864's base64(MD5 digest)."""
    digest = hashlib.md5(body)
    return (
        base64.b64encode(digest.hexdigest().encode()).decode(),
        base64.b64encode(digest.digest()).decode(),
    )


def precheck(
    headers: Mapping[str, str], keys: Mapping[str, str], *, now: datetime, max_skew: int
) -> tuple[str, str]:
    """The checks that need no body: a well-formed Authorization naming a known key and a
    fresh Date. Returns (key id, signature)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("MNS ") or ":" not in auth:
        raise MissingAuthorization(
            "An 'Authorization: MNS <AccessKeyId>:<Signature>' header is required."
        )
    key_id, _, signature = auth[4:].partition(":")
    if key_id not in keys:
        raise InvalidAccessKeyId(f"The specified AccessKeyId {key_id} is not found.")
    try:
        when = parsedate_to_datetime(headers.get("date", ""))
    except (TypeError, ValueError):
        raise InvalidTimestamp("The Date header is missing or malformed.") from None
    if when.tzinfo is None:  # "-0000" or no zone at all: not a time we can compare
        raise InvalidTimestamp("The Date header must be in GMT (RFC 1123).")
    if abs((now - when).total_seconds()) > max_skew:
        raise InvalidTimestamp("The Date header is too far from the server time.")
    return key_id, signature


def verify(
    method: str,
    headers: Mapping[str, str],
    resource: str,
    body: bytes,
    keys: Mapping[str, str],
    *,
    now: datetime,
    max_skew: int,
) -> str:
    """Return the caller's AccessKeyId (``headers`` with lower-case names)."""
    key_id, signature = precheck(headers, keys, now=now, max_skew=max_skew)
    declared = headers.get("content-md5")
    if body and declared is None:
        raise InvalidArgument("Content-MD5 is required with a body.", code="InvalidDigest")
    if declared is not None and declared not in content_md5_forms(body):
        raise InvalidArgument("Content-MD5 does not match the body.", code="InvalidDigest")
    if not hmac.compare_digest(sign(keys[key_id], method, headers, resource), signature):
        raise SignatureDoesNotMatch("The MNS signature does not match.")
    return key_id


def replay_key(headers: Mapping[str, str]) -> str:
    """The replay-cache key of a verified request: its signature. Two byte-identical
    requests signed within the same second share it (see README "Security")."""
    return "mns:" + headers.get("authorization", "").rpartition(":")[2]
