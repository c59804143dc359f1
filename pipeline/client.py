"""A small signed HTTP client for openimm (CLI, demo, benchmarks, tests).

It signs exactly like the official SDK (ACS3-HMAC-SHA256), so anything it can do, SDK users
can do too. Structured values passed as dict/list are JSON-encoded like the SDK's "shrink".
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from pipeline import auth


class ClientError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body
        self.code = str(body.get("Code", ""))
        super().__init__(f"{status} {self.code}: {body.get('Message', '')}")


class ImmClient:
    def __init__(
        self, endpoint: str, key: tuple[str, str] | None, *, timeout: float = 30.0
    ) -> None:
        self.base = endpoint if "://" in endpoint else f"http://{endpoint}"
        self.key = key
        self.http = httpx.Client(base_url=self.base, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _headers(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        extra: dict[str, str] | None = None,
        unsigned: bool = False,
    ) -> dict[str, str]:
        headers = {
            "host": httpx.URL(self.base).netloc.decode(),
            "x-acs-date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "x-acs-signature-nonce": secrets.token_hex(16),
            "x-acs-content-sha256": auth.UNSIGNED_PAYLOAD
            if unsigned
            else hashlib.sha256(body).hexdigest(),
            **(extra or {}),
        }
        if self.key is not None:
            names = sorted(headers)
            signed = auth.SignedRequest(method, path, query, headers, body)
            headers["Authorization"] = auth.sign(signed, *self.key, names)
        return headers

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        query = {k: _encode(v) for k, v in params.items() if v is not None}
        headers = self._headers(
            "POST", "/", query, b"", {"x-acs-action": action, "x-acs-version": "2020-09-30"}
        )
        response = self.http.post("/?" + urlencode(query), headers=headers)
        return _json(response)

    def put_object(self, uri: str, path: Path) -> dict[str, Any]:
        route = "/oss/" + uri.removeprefix("oss://")
        headers = self._headers("PUT", route, {}, b"", unsigned=True)
        with path.open("rb") as handle:
            response = self.http.put(route, content=handle, headers=headers)
        return _json(response)

    def get_object(self, uri: str) -> bytes:
        route = "/oss/" + uri.removeprefix("oss://")
        response = self.http.get(route, headers=self._headers("GET", route, {}, b""))
        if response.status_code >= 400:
            raise ClientError(response.status_code, response.json())
        return response.content

    def list_objects(self, uri: str) -> list[dict[str, Any]]:
        bucket, _, prefix = uri.removeprefix("oss://").partition("/")
        query = {"prefix": prefix}
        route = f"/oss/{bucket}"
        response = self.http.get(
            route + "?" + urlencode(query), headers=self._headers("GET", route, query, b"")
        )
        return list(_json(response)["Objects"])


def _encode(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"Code": "InvalidResponse", "Message": response.text[:200]}
    if response.status_code >= 400:
        raise ClientError(response.status_code, body)
    return body
