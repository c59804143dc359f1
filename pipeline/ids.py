"""Identifiers and time formats exactly as IMM shapes them (reference §0, §1.1)."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from pipeline.jobs import KINDS

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# TaskId is ``<prefix>-<uuid4>`` where the prefix is the TaskType (reference §1.1:
# MediaConvert-…, FileCompression-…, Highlight-…) except where IMM's own samples show another
# prefix. The one exception on record: seed 004 shows CreateFigureClusteringTask returning
# ``CreateFigureClusteringTask-<uuid>`` while GetTask's TaskType is ``FaceClustering``.
# Where IMM's samples give a TaskId another prefix than the task type (pipeline.jobs).
TASK_ID_PREFIXES: dict[str, str] = {
    k.task_type: k.task_id_prefix for k in KINDS if k.task_id_prefix
}
EVENT_ID_CHARS = 27  # seed 004: "049-1udsgM0nr0leAdDBAOxe4kDLYM5"


def request_id() -> str:
    """An upper-case UUID, the shape of IMM's ``RequestId``."""
    return str(uuid.uuid4()).upper()


def task_id(task_type: str) -> str:
    """``<prefix>-<uuid4>``, the prefix from :data:`TASK_ID_PREFIXES` or the TaskType."""
    return f"{TASK_ID_PREFIXES.get(task_type, task_type)}-{uuid.uuid4()}"


def event_id() -> str:
    """``<3 hex>-<27 base62>``, the shape of IMM's ``EventId`` and message ``id``."""
    body = "".join(secrets.choice(_BASE62) for _ in range(EVENT_ID_CHARS))
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
