"""The ``EAS`` request signature of the ``eas-prediction`` client (PAI Model Hub services).

The client signs ``POST\\n<hex MD5 of body>\\n<Content-Type>\\n<Date>\\n/api/predict/<service>``
with HMAC-SHA1 keyed by its token and sends ``Authorization: EAS <base64 signature>`` with a
``Content-MD5`` header. openimm accepts any AccessKeySecret of ``OPENIMM_ACCESS_KEYS`` as a
token; the key's owner is the caller.

Freshness. The client (``eas_prediction.predict_client.generate_singaure``) builds ``Date`` as
``datetime.datetime.now().strftime('%a, %d %b %Y %H:%M:%S GMT')``: its *local* wall clock
with a ``GMT`` label. On a UTC host (containers, the usual server) that is the true time; on a
host in zone +08:00 it is 8 h ahead. Accepting every zone (±14 h) let a captured request be
replayed for 28 h, so the window is what the clients need and no more: ±skew around UTC, plus
±skew around each offset the operator lists in ``OPENIMM_EAS_CLIENT_UTC_OFFSETS`` (the zones
its non-UTC clients run in). A refused Date names the offset it looks like, to make that
setting easy to get right. The signature covers the Date and the body MD5; it is the replay
key, kept as long as some offset's window still accepts the Date.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from pipeline.errors import AuthError, MissingAuthorization

ZONE_STEP = timedelta(minutes=15)  # every UTC offset in use is a multiple of 15 minutes


class EasSignatureMismatch(AuthError):
    """The EAS signature does not match: check the token."""

    code = "SignatureDoesNotMatch"


def string_to_sign(content_md5: str, content_type: str, date: str, service: str) -> str:
    return f"POST\n{content_md5}\n{content_type}\n{date}\n/api/predict/{service}"


def sign(token: str, text: str) -> str:
    digest = hmac.new(token.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def client_offsets(text: str) -> list[timedelta]:
    """UTC plus the offsets of ``OPENIMM_EAS_CLIENT_UTC_OFFSETS`` ("+08:00,-05:30")."""
    offsets = [timedelta(0)]
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        sign, hours, _, minutes = item[:1], item[1:3], item[3:4], item[4:6]
        if sign not in "+-" or not (hours + minutes).isdigit() or len(item) != 6:
            raise ValueError(f"{item!r} is not a UTC offset like +08:00")
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        offsets.append(delta if sign == "+" else -delta)
    return offsets


def window_seconds(offsets: list[timedelta], max_skew: int) -> float:
    """How long one Date stays acceptable: from the earliest to the latest offset's window."""
    spread = max(offsets) - min(offsets)
    return spread.total_seconds() + 2 * max_skew + 1


def precheck(
    headers: dict[str, str], *, now: datetime, max_skew: int, offsets: list[timedelta]
) -> str:
    """The checks that need no body: an ``EAS <signature>`` Authorization and a fresh Date.
    Returns the signature."""
    auth = headers.get("authorization", "")
    if not auth:
        raise MissingAuthorization("The request is not signed: an EAS Authorization is required.")
    scheme, _, signature = auth.partition(" ")
    if scheme != "EAS" or not signature.strip():
        raise EasSignatureMismatch("Authorization must be 'EAS <signature>'.")
    _check_date(headers.get("date", ""), now, max_skew, offsets)
    return signature.strip()


def verify(
    headers: dict[str, str],
    body: bytes,
    service: str,
    keys: dict[str, str],
    *,
    now: datetime,
    max_skew: int,
    offsets: list[timedelta],
) -> str:
    """The owner (AccessKeyId) whose secret signed the request, or raise an ``AuthError``."""
    signature = precheck(headers, now=now, max_skew=max_skew, offsets=offsets)
    content_md5 = headers.get("content-md5", "")
    if content_md5 != hashlib.md5(body).hexdigest():
        raise EasSignatureMismatch("Content-MD5 does not match the body.")
    text = string_to_sign(content_md5, headers.get("content-type", ""), headers["date"], service)
    for owner, secret in sorted(keys.items()):
        if hmac.compare_digest(sign(secret, text), signature):
            return owner
    raise EasSignatureMismatch()


def _check_date(date: str, now: datetime, max_skew: int, offsets: list[timedelta]) -> None:
    try:
        sent = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise EasSignatureMismatch("The Date header is missing or malformed.") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    skew = timedelta(seconds=max_skew)
    if any(abs(sent - (now + offset)) <= skew for offset in offsets):
        return
    looks_like = round((sent - now) / ZONE_STEP) * ZONE_STEP
    hours, rest = divmod(abs(int(looks_like.total_seconds())) // 60, 60)
    zone = f"{'-' if looks_like < timedelta(0) else '+'}{hours:02d}:{rest:02d}"
    raise EasSignatureMismatch(
        f"The Date header is too far from the server's time (it looks like UTC{zone}; a client "
        f"host in that zone needs it in OPENIMM_EAS_CLIENT_UTC_OFFSETS)."
    )
