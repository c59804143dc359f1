"""Names and quotas of MNS resources (topics, subscriptions, queues), shared by
``pipeline.notify.topics`` and ``pipeline.notify.queues`` so neither imports the other's
module for them."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from pipeline.errors import InvalidParameter, QuotaExceeded

# MNS names: letters, digits and '-', starting with a letter, at most 256 characters.
TOPIC_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,255}$")
QUOTA_CODES = {  # MNS's error codes for its quotas
    "queues per owner": "QueueNumExceeded",
    "topics per owner": "TopicNumExceeded",
    "subscriptions per topic": "SubscriptionNumExceeded",
}


def check_name(kind: str, name: str) -> str:
    if not TOPIC_NAME_RE.match(name or ""):
        raise InvalidParameter(kind, "Use 1-256 letters, digits or '-', starting with a letter.")
    return name


def check_quota(session: Session, count: Select[Any], quota: int | None, what: str) -> None:
    """Refuse a create once ``count`` (rows the owner already has) reached ``quota``. The
    count and the insert are not atomic: concurrent creates may overshoot by a few."""
    if quota is None:
        return
    have = session.scalar(count) or 0
    if have >= quota:
        raise QuotaExceeded(
            f"The {what} quota ({quota}) is used up; delete some or ask the operator to raise it.",
            mns_code=QUOTA_CODES[what],
        )
