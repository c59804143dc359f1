"""The EAS signature, checked against the eas-prediction client's own signer."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction import PredictClient

from pipeline import eas_auth
from pipeline.errors import AuthError

KEYS = {"AK1": "secret-1", "AK2": "secret-2"}


def client_headers(token: str, body: bytes, service: str = "asr") -> dict[str, str]:
    client = PredictClient("http://127.0.0.1:1", service)
    client.set_token(token)
    headers = client.generate_singaure(bytearray(body))
    return {k.lower(): v for k, v in headers.items()}


def verify(headers: dict[str, str], body: bytes, service: str = "asr", offsets: str = "") -> str:
    return eas_auth.verify(
        headers,
        body,
        service,
        KEYS,
        now=datetime.now(UTC),
        max_skew=900,
        offsets=eas_auth.client_offsets(offsets),
    )


def signed_at(when: datetime, body: bytes, secret: str = "secret-1") -> dict[str, str]:
    """What the client sends when its local clock reads ``when`` (labelled GMT)."""
    headers = client_headers(secret, body)
    headers["date"] = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    text = eas_auth.string_to_sign(
        headers["content-md5"], headers["content-type"], headers["date"], "asr"
    )
    headers["authorization"] = "EAS " + eas_auth.sign(secret, text)
    return headers


def test_the_clients_signature_identifies_the_owner() -> None:
    body = b'{"input": {"url": "oss://b/a.wav"}}'
    assert verify(client_headers("secret-2", body), body) == "AK2"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),  # body changed after signing
        lambda h, b: ({**h, "content-md5": "0" * 32}, b),
        lambda h, b: ({**h, "authorization": "EAS AAAA"}, b),
        lambda h, b: ({**h, "authorization": "Bearer x"}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "authorization"}, b),
        lambda h, b: ({**h, "date": "yesterday"}, b),
    ],
)
def test_tampered_or_unsigned_requests_are_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    body = b'{"input": {}}'
    headers, sent = tamper(client_headers("secret-1", body), body)
    with pytest.raises(AuthError):
        verify(headers, sent)


def test_wrong_token_service_and_stale_date() -> None:
    body = b"{}"
    with pytest.raises(AuthError):
        verify(client_headers("not-a-secret", body), body)
    with pytest.raises(AuthError):
        verify(client_headers("secret-1", body, "asr"), body, "video_highlight")
    headers = client_headers("secret-1", body)
    old = datetime.now(UTC) - timedelta(days=2)
    headers["date"] = old.strftime("%a, %d %b %Y %H:%M:%S GMT")
    with pytest.raises(AuthError):
        verify(headers, body)


def test_a_date_hours_old_is_refused_unless_its_zone_is_configured() -> None:
    # Attack (issue 9.5): a captured predict call was accepted for 14 h.
    body = b"{}"
    hour_old = signed_at(datetime.now(UTC) - timedelta(hours=1), body)
    with pytest.raises(AuthError, match="UTC-01:00"):
        verify(hour_old, body)
    # A client host in zone -01:00 really sends that Date: the operator lists its zone.
    assert verify(hour_old, body, offsets="+08:00,-01:00") == "AK1"
    shanghai = signed_at(datetime.now(UTC) + timedelta(hours=8), body)
    assert verify(shanghai, body, offsets="+08:00") == "AK1"
    with pytest.raises(AuthError):
        verify(shanghai, body, offsets="-01:00")


def test_offsets_are_validated_and_set_the_replay_window() -> None:
    assert eas_auth.client_offsets("") == [timedelta(0)]
    assert eas_auth.client_offsets("+05:45, -03:30")[1:] == [
        timedelta(hours=5, minutes=45),
        -timedelta(hours=3, minutes=30),
    ]
    for bad in ("8", "+8:00", "UTC+08:00", "+08:00:00"):
        with pytest.raises(ValueError):
            eas_auth.client_offsets(bad)
    assert eas_auth.window_seconds([timedelta(0)], 900) == 1801
    assert eas_auth.window_seconds(eas_auth.client_offsets("+08:00"), 900) == 8 * 3600 + 1801
