"""Opaque ``NextToken`` values for keyset paging (base64url JSON of the last sort key)."""

from __future__ import annotations

import base64
import json
from typing import Any

from pipeline.errors import InvalidParameter
from pipeline.params import loads


def encode(key: list[Any]) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> list[Any] | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = loads(base64.urlsafe_b64decode(padded.encode()), max_depth=2)
    except ValueError:  # also bad base64 and bad UTF-8
        raise InvalidParameter("NextToken", "The token is malformed.") from None
    if not isinstance(value, list):
        raise InvalidParameter("NextToken", "The token is malformed.")
    return value
