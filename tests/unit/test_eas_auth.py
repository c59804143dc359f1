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


def verify(headers: dict[str, str], body: bytes, service: str = "asr") -> str:
    return eas_auth.verify(headers, body, service, KEYS, now=datetime.now(UTC), max_skew=900)


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
