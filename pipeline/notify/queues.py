"""MNS-compatible queues in the database: send, receive with a visibility timeout, delete by
receipt handle, change visibility, dead-letter after N receives.

A received message becomes invisible for the queue's VisibilityTimeout and gets a fresh
receipt handle; if it is not deleted in time it becomes receivable again with DequeueCount+1
(and the old handle stops working). Bodies are stored verbatim: MNS base64 is client-side.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.errors import (
    InvalidArgument,
    InvalidParameter,
    MessageNotExist,
    QueueAlreadyExist,
    QueueNotExist,
    ReceiptHandleError,
)
from pipeline.ids import utcnow
from pipeline.models import MnsMessage, MnsQueue
from pipeline.notify.limits import check_name, check_quota
from pipeline.notify.messages import md5_upper
from pipeline.params import parse_int

DEAD_LETTER_SUFFIX = "-deadletter"
QUEUE_ATTRIBUTES = {  # XML name → (column, minimum, maximum)
    "VisibilityTimeout": ("visibility_timeout", 1, 43200),
    "MaximumMessageSize": ("maximum_message_size", 1024, 65536),
    "MessageRetentionPeriod": ("message_retention_period", 60, 604800),
    "DelaySeconds": ("delay_seconds", 0, 604800),
    "PollingWaitSeconds": ("polling_wait_seconds", 0, 30),
}


@dataclass(frozen=True)
class Received:
    message_id: str
    body: str
    body_md5: str
    receipt_handle: str
    enqueue_time: datetime
    first_dequeue_time: datetime
    next_visible_time: datetime
    dequeue_count: int
    priority: int


def get_queue(session: Session, owner: str, name: str) -> MnsQueue:
    queue = session.scalar(select(MnsQueue).where(MnsQueue.owner == owner, MnsQueue.name == name))
    if queue is None:
        raise QueueNotExist(f"The queue {name} does not exist.")
    return queue


def create_queue(
    session: Session, owner: str, name: str, attrs: dict[str, str], *, quota: int | None = None
) -> bool:
    """Create the queue; False when it already existed (MNS answers 204 then). ``quota``:
    how many queues the owner may have (dead-letter queues are created outside it)."""
    check_name("QueueName", name)
    values = {
        col: bounded(key, attrs[key], low, high)
        for key, (col, low, high) in QUEUE_ATTRIBUTES.items()
        if attrs.get(key)
    }
    existing = session.scalar(
        select(MnsQueue).where(MnsQueue.owner == owner, MnsQueue.name == name)
    )
    if existing is not None:
        if any(getattr(existing, col) != v for col, v in values.items()):
            raise QueueAlreadyExist(f"The queue {name} exists with other attributes.")
        return False
    check_quota(
        session, select(func.count()).where(MnsQueue.owner == owner), quota, "queues per owner"
    )
    try:
        with session.begin_nested():
            session.add(MnsQueue(owner=owner, name=name, create_time=utcnow(), **values))
    except IntegrityError:
        return False
    return True


def bounded(key: str, raw: str, low: int, high: int) -> int:
    """An integer MNS attribute or argument in ``[low, high]``; MNS's ``InvalidArgument``
    otherwise (also for non-numbers and anything beyond 64 bits)."""
    try:
        return parse_int(raw, low, high)
    except ValueError:
        raise InvalidArgument(
            f"The value of {key} should be an integer between {low} and {high}."
        ) from None


def list_queues(session: Session, owner: str, prefix: str = "") -> Sequence[MnsQueue]:
    query = select(MnsQueue).where(MnsQueue.owner == owner).order_by(MnsQueue.name)
    if prefix:
        query = query.where(MnsQueue.name.startswith(prefix, autoescape=True))
    return session.scalars(query).all()


def send(
    session: Session,
    queue: MnsQueue,
    body: str,
    *,
    delay: int | None = None,
    priority: int = 8,
    message_id: str | None = None,
) -> MnsMessage:
    if len(body.encode()) > queue.maximum_message_size:
        raise InvalidParameter("MessageBody", f"Longer than {queue.maximum_message_size} bytes.")
    now = utcnow()
    wait = queue.delay_seconds if delay is None else delay
    message = MnsMessage(
        queue_id=queue.id,
        message_id=message_id or secrets.token_hex(16).upper(),
        body=body,
        body_md5=md5_upper(body),
        priority=priority,
        enqueue_time=now,
        next_visible_time=now + timedelta(seconds=wait),
        dequeue_count=0,
        receipt_handle="",
    )
    session.add(message)
    session.flush()
    return message


def receive(session: Session, queue: MnsQueue, dead_letter_after: int) -> Received | None:
    """Take the next visible message, or None. Safe with concurrent receivers."""
    for _ in range(5):  # another receiver may win the row; try the next one
        now = utcnow()
        query = (
            select(MnsMessage)
            .where(MnsMessage.queue_id == queue.id, MnsMessage.next_visible_time <= now)
            .order_by(MnsMessage.priority, MnsMessage.id)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        message = session.scalar(query)
        if message is None:
            return None
        if dead_letter_after and message.dequeue_count >= dead_letter_after:
            _dead_letter(session, queue, message)
            continue
        handle = secrets.token_hex(16).upper()
        claimed = session.execute(
            update(MnsMessage)
            .where(MnsMessage.id == message.id, MnsMessage.next_visible_time <= now)
            .values(
                dequeue_count=MnsMessage.dequeue_count + 1,
                receipt_handle=handle,
                first_dequeue_time=message.first_dequeue_time or now,
                next_visible_time=now + timedelta(seconds=queue.visibility_timeout),
            )
        )
        if claimed.rowcount:  # type: ignore[attr-defined]
            session.refresh(message)
            return Received(
                message.message_id,
                message.body,
                message.body_md5,
                handle,
                message.enqueue_time,
                message.first_dequeue_time or now,
                message.next_visible_time,
                message.dequeue_count,
                message.priority,
            )
    return None


def dead_letter_queue(session: Session, queue: MnsQueue) -> MnsQueue:
    """``<queue>-deadletter``, created on first use."""
    name = queue.name + DEAD_LETTER_SUFFIX
    create_queue(session, queue.owner, name, {})
    return get_queue(session, queue.owner, name)


def _dead_letter(session: Session, queue: MnsQueue, message: MnsMessage) -> None:
    target = dead_letter_queue(session, queue)
    message.queue_id, message.next_visible_time = target.id, utcnow()
    message.dequeue_count, message.receipt_handle = 0, ""


def _by_handle(session: Session, queue: MnsQueue, handle: str) -> MnsMessage:
    message = session.scalar(
        select(MnsMessage).where(
            MnsMessage.queue_id == queue.id, MnsMessage.receipt_handle == handle
        )
    )
    if message is None or not handle:
        raise ReceiptHandleError(f"The receipt handle {handle} is not valid.")
    if message.next_visible_time <= utcnow():
        raise MessageNotExist("The receipt handle has expired: the message is visible again.")
    return message


def delete(session: Session, queue: MnsQueue, handle: str) -> None:
    session.delete(_by_handle(session, queue, handle))


def change_visibility(
    session: Session, queue: MnsQueue, handle: str, seconds: int
) -> tuple[str, datetime]:
    message = _by_handle(session, queue, handle)
    bounded("VisibilityTimeout", str(seconds), 1, 43200)
    message.receipt_handle = secrets.token_hex(16).upper()
    message.next_visible_time = utcnow() + timedelta(seconds=seconds)
    return message.receipt_handle, message.next_visible_time


def attributes(session: Session, queue: MnsQueue) -> dict[str, Any]:
    total = session.scalar(select(func.count()).where(MnsMessage.queue_id == queue.id)) or 0
    active = (
        session.scalar(
            select(func.count()).where(
                MnsMessage.queue_id == queue.id, MnsMessage.next_visible_time <= utcnow()
            )
        )
        or 0
    )
    return {
        "QueueName": queue.name,
        "ActiveMessages": active,
        "InactiveMessages": total - active,
        "DelayMessages": 0,
        **{key: getattr(queue, col) for key, (col, _, _) in QUEUE_ATTRIBUTES.items()},
    }
