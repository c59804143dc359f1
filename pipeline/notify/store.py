"""Where MNS queue messages live: the database (embedded default) or Redis (distributed mode,
``OPENIMM_REDIS_URL``). Queue definitions stay in the database in both modes; only messages
move. Both stores give the same semantics (visibility timeout, receipt handles, DequeueCount,
dead-letter, idempotent put per MessageId) and wake long-polling receivers by push when a
message is put (``pipeline.notify.wake``)."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from sqlalchemy import func, select

from pipeline.db import Database
from pipeline.ids import utcnow
from pipeline.models import MnsMessage, MnsQueue
from pipeline.notify import queues, wake
from pipeline.notify.queues import Received
from pipeline.settings import Settings


class MessageStore(Protocol):
    def put(
        self,
        queue: MnsQueue,
        body: str,
        *,
        message_id: str | None = None,
        delay: int | None = None,
        priority: int = 8,
    ) -> tuple[str, str]: ...

    def receive(
        self, queue: MnsQueue, dead_letter: MnsQueue | None, dead_letter_after: int
    ) -> Received | None: ...

    def delete(self, queue: MnsQueue, handle: str) -> None: ...

    def change_visibility(
        self, queue: MnsQueue, handle: str, seconds: int
    ) -> tuple[str, datetime]: ...

    def counts(self, queue: MnsQueue) -> tuple[int, int]: ...

    def drop(self, queue: MnsQueue) -> None: ...

    def next_visible_in(self, queue: MnsQueue) -> float | None:
        """Seconds until the queue's earliest invisible message turns visible (delayed or
        in flight), None when the queue holds none: how long a receiver may sleep."""
        ...

    def waiting(self, queue: MnsQueue) -> AbstractContextManager[wake.Waiter]:
        """Register a long-polling receiver that any put to ``queue`` (from this or another
        process) wakes; register before reading the store so no put is missed."""
        ...

    def close(self) -> None: ...


class DbMessageStore:
    """Messages as rows (``mns_messages``): the embedded default, no server needed."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.namespace = db.url
        self.listener: wake.Listener | None = None  # started by the first long poll
        self._lock = threading.Lock()

    def put(
        self,
        queue: MnsQueue,
        body: str,
        *,
        message_id: str | None = None,
        delay: int | None = None,
        priority: int = 8,
    ) -> tuple[str, str]:
        with self.db.session() as s:
            message = queues.send(
                s, s.merge(queue), body, message_id=message_id, delay=delay, priority=priority
            )
            if not self.db.is_sqlite:  # delivered to other processes' listeners at commit
                s.execute(select(func.pg_notify(wake.CHANNEL, wake.payload(queue.id))))
            result = message.message_id, message.body_md5
        wake.HUB.notify(f"{self.namespace}:{queue.id}")  # after commit: receivers see it
        return result

    def receive(
        self, queue: MnsQueue, dead_letter: MnsQueue | None, dead_letter_after: int
    ) -> Received | None:
        with self.db.session() as s:
            return queues.receive(s, s.merge(queue), dead_letter_after)

    def delete(self, queue: MnsQueue, handle: str) -> None:
        with self.db.session() as s:
            queues.delete(s, s.merge(queue), handle)

    def change_visibility(self, queue: MnsQueue, handle: str, seconds: int) -> tuple[str, datetime]:
        with self.db.session() as s:
            return queues.change_visibility(s, s.merge(queue), handle, seconds)

    def counts(self, queue: MnsQueue) -> tuple[int, int]:
        with self.db.session() as s:
            attrs = queues.attributes(s, s.merge(queue))
            return int(attrs["ActiveMessages"]), int(attrs["InactiveMessages"])

    def drop(self, queue: MnsQueue) -> None:
        return  # rows go with the queue (ON DELETE CASCADE)

    def next_visible_in(self, queue: MnsQueue) -> float | None:
        with self.db.session() as s:
            when = s.scalar(
                select(func.min(MnsMessage.next_visible_time)).where(
                    MnsMessage.queue_id == queue.id
                )
            )
        return None if when is None else (when - utcnow()).total_seconds()

    def waiting(self, queue: MnsQueue) -> AbstractContextManager[wake.Waiter]:
        if not self.db.is_sqlite:
            self._ensure_listener()
        return wake.HUB.waiting(f"{self.namespace}:{queue.id}")

    def _ensure_listener(self) -> None:
        with self._lock:
            if self.listener is None:
                self.listener = wake.Listener(
                    "mns-pg-listen",
                    wake.pg_listen(
                        self.db.url, wake.CHANNEL, lambda note: wake.dispatch(self.namespace, note)
                    ),
                )

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


def open_message_store(settings: Settings, db: Database) -> MessageStore:
    if settings.redis_url:
        from pipeline.notify.redis_store import RedisMessageStore

        return RedisMessageStore.from_url(settings.redis_url)
    return DbMessageStore(db)
