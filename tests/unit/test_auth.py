"""ACS3-HMAC-SHA256 verification against the official SDK's own signer."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from alibabacloud_tea_openapi.utils import Utils as SdkUtils

from pipeline import auth
from pipeline.errors import (
    AuthNotConfigured,
    InvalidAccessKeyId,
    InvalidTimestamp,
    MissingAuthorization,
    SignatureDoesNotMatch,
)

KEYS = {"AK1": "secret-1", "AK2": "secret-2"}
NOW = datetime(2026, 11, 23, 6, 0, 0, tzinfo=UTC)


class _SdkRequest:
    def __init__(self, query: dict[str, str], headers: dict[str, str]) -> None:
        self.method, self.pathname, self.query, self.headers = "POST", "/", query, headers


def sdk_signed(
    query: dict[str, str],
    *,
    key: str = "AK1",
    secret: str = "secret-1",
    when: datetime = NOW,
    body: bytes = b"",
) -> auth.SignedRequest:
    headers = {
        "host": "127.0.0.1:8080",
        "x-acs-version": "2020-09-30",
        "x-acs-action": "GetTask",
        "x-acs-date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": "n1",
        "accept": "application/json",
        "user-agent": "sdk",
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    headers["authorization"] = SdkUtils.get_authorization(
        _SdkRequest(query, headers),
        "ACS3-HMAC-SHA256",
        headers["x-acs-content-sha256"],
        key,
        secret,
    )
    return auth.SignedRequest("POST", "/", query, headers, body)


def verify(request: auth.SignedRequest, now: datetime = NOW) -> str:
    return auth.verify(request, KEYS, now=now, max_skew=900)


def test_sdk_signature_is_accepted_and_names_the_owner() -> None:
    query = {"ProjectName": "p", "Tags": '{"a":"b c/ü"}', "UserData": "x~y*z"}
    assert verify(sdk_signed(query)) == "AK1"
    assert verify(sdk_signed(query, key="AK2", secret="secret-2")) == "AK2"


def test_tampered_query_is_refused() -> None:
    request = sdk_signed({"ProjectName": "p"})
    tampered = auth.SignedRequest("POST", "/", {"ProjectName": "q"}, request.headers, b"")
    with pytest.raises(SignatureDoesNotMatch):
        verify(tampered)


def test_wrong_secret_unknown_key_and_missing_header() -> None:
    with pytest.raises(SignatureDoesNotMatch):
        verify(sdk_signed({"A": "1"}, secret="wrong"))
    with pytest.raises(InvalidAccessKeyId):
        verify(sdk_signed({"A": "1"}, key="NOPE"))
    unsigned = auth.SignedRequest("POST", "/", {}, {"host": "h"}, b"")
    with pytest.raises(MissingAuthorization):
        verify(unsigned)


def test_stale_or_future_date_is_refused() -> None:
    with pytest.raises(InvalidTimestamp):
        verify(sdk_signed({"A": "1"}, when=NOW - timedelta(minutes=16)))
    with pytest.raises(InvalidTimestamp):
        verify(sdk_signed({"A": "1"}, when=NOW + timedelta(minutes=16)))
    assert verify(sdk_signed({"A": "1"}, when=NOW - timedelta(minutes=14))) == "AK1"


def test_body_must_match_its_declared_hash() -> None:
    request = sdk_signed({}, body=b"ProjectName=p")
    assert verify(request) == "AK1"
    swapped = auth.SignedRequest("POST", "/", {}, request.headers, b"ProjectName=q")
    with pytest.raises(SignatureDoesNotMatch):
        verify(swapped)


def test_unsigned_payload_only_where_allowed() -> None:
    headers = {
        "host": "h",
        "x-acs-date": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-content-sha256": auth.UNSIGNED_PAYLOAD,
        "x-acs-signature-nonce": "n2",
    }
    request = auth.SignedRequest("PUT", "/oss/b/k", {}, headers, b"")
    headers["authorization"] = auth.sign(request, "AK1", "secret-1", sorted(headers))
    with pytest.raises(SignatureDoesNotMatch):
        verify(request)
    assert auth.verify(request, KEYS, now=NOW, max_skew=900, allow_unsigned_payload=True) == "AK1"


def _signed_without(name: str) -> auth.SignedRequest:
    """An SDK-style request whose signature leaves out ``name`` (sent but unsigned)."""
    request = sdk_signed({"ProjectName": "p"})
    headers = dict(request.headers)
    names = sorted(n for n in headers if n not in ("authorization", name))
    bare = auth.SignedRequest("POST", "/", request.query, headers, b"")
    headers["authorization"] = auth.sign(bare, "AK1", "secret-1", names)
    return auth.SignedRequest("POST", "/", request.query, headers, b"")


@pytest.mark.parametrize(
    "name", ["x-acs-action", "x-acs-version", "x-acs-signature-nonce", "x-acs-date", "host"]
)
def test_headers_the_server_acts_on_must_be_signed(name: str) -> None:
    # Attack (issue 9.2): an unsigned x-acs-action can be swapped on a captured request.
    with pytest.raises(SignatureDoesNotMatch, match=name):
        verify(_signed_without(name))


def test_a_repeated_signed_header_is_refused() -> None:
    request = sdk_signed({"ProjectName": "p"})
    twice = auth.SignedRequest(
        "POST", "/", request.query, request.headers, b"", repeated=frozenset({"user-agent"})
    )
    with pytest.raises(SignatureDoesNotMatch, match="more than once"):
        verify(twice)


def test_content_type_must_be_signed_with_a_body() -> None:
    request = sdk_signed({}, body=b"ProjectName=p")
    headers = {**request.headers, "content-type": "application/x-www-form-urlencoded"}
    with pytest.raises(SignatureDoesNotMatch, match="content-type"):
        verify(auth.SignedRequest("POST", "/", {}, headers, request.body))


def test_no_keys_is_open_only_in_explicit_dev_mode() -> None:
    assert auth.anonymous_owner({}, dev_mode=True) == auth.DEV_OWNER
    assert auth.anonymous_owner(KEYS, dev_mode=True) is None
    with pytest.raises(AuthNotConfigured):
        auth.anonymous_owner({}, dev_mode=False)
