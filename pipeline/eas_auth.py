"""The ``EAS`` request signature of the ``eas-prediction`` client (PAI Model Hub services).

The client signs ``POST\\n<hex MD5 of body>\\n<Content-Type>\\n<Date>\\n/api/predict/<service>``
with HMAC-SHA1 keyed by its token and sends ``Authorization: EAS <base64 signature>`` with a
``Content-MD5`` header. openimm accepts any AccessKeySecret of ``OPENIMM_ACCESS_KEYS`` as a
token; the key's owner is the caller.

The client formats its *local* time with a ``GMT`` suffix, so on a host whose clock is not UTC
the ``Date`` is off by the zone offset. The freshness window is therefore the zone range
(±14 h) plus the usual skew, which still bounds replays of a captured request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from pipeline.errors import AuthError, MissingAuthorization

ZONE_SLACK = timedelta(hours=14)


class EasSignatureMismatch(AuthError):
    """The EAS signature does not match: check the token."""

    code = "SignatureDoesNotMatch"


def string_to_sign(content_md5: str, content_type: str, date: str, service: str) -> str:
    return f"POST\n{content_md5}\n{content_type}\n{date}\n/api/predict/{service}"


def sign(token: str, text: str) -> str:
    digest = hmac.new(token.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify(
    headers: dict[str, str],
    body: bytes,
    service: str,
    keys: dict[str, str],
    *,
    now: datetime,
    max_skew: int,
) -> str:
    """The owner (AccessKeyId) whose secret signed the request, or raise an ``AuthError``."""
    auth = headers.get("authorization", "")
    if not auth:
        raise MissingAuthorization("The request is not signed: an EAS Authorization is required.")
    scheme, _, signature = auth.partition(" ")
    if scheme != "EAS" or not signature:
        raise EasSignatureMismatch("Authorization must be 'EAS <signature>'.")
    content_md5 = headers.get("content-md5", "")
    if content_md5 != hashlib.md5(body).hexdigest():
        raise EasSignatureMismatch("Content-MD5 does not match the body.")
    date = headers.get("date", "")
    _check_date(date, now, max_skew)
    text = string_to_sign(content_md5, headers.get("content-type", ""), date, service)
    for owner, secret in sorted(keys.items()):
        if hmac.compare_digest(sign(secret, text), signature.strip()):
            return owner
    raise EasSignatureMismatch()


def _check_date(date: str, now: datetime, max_skew: int) -> None:
    try:
        sent = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise EasSignatureMismatch("The Date header is missing or malformed.") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    if abs(now - sent) > ZONE_SLACK + timedelta(seconds=max_skew):
        raise EasSignatureMismatch("The Date header is too far from the server's time.")
