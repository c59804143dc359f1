"""Identifiers and time formats exactly as IMM shapes them (reference §0, §1.1)."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def request_id() -> str:
    """An upper-case UUID, the shape of IMM's ``RequestId``."""
    return str(uuid.uuid4()).upper()


def task_id(task_type: str) -> str:
    """``<TaskType>-<uuid4>``."""
    return f"{task_type}-{uuid.uuid4()}"


def event_id() -> str:
    """``<3 hex>-<25 base62>``, the shape of IMM's ``EventId`` and message ``id``."""
    body = "".join(secrets.choice(_BASE62) for _ in range(25))
    return f"{secrets.token_hex(2)[:3].upper()}-{body}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def task_time(value: datetime | None) -> str:
    """Task ``StartTime``/``EndTime``: ISO-8601 UTC with sub-second digits and ``Z``."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resource_time(value: datetime | None) -> str:
    """Project/Dataset ``CreateTime``/``UpdateTime``: RFC3339 with the server's local offset."""
    if value is None:
        return ""
    return value.astimezone().isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """Parse an RFC3339 time as used in ``StartTimeRange``/``EndTimeRange``."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
