"""Where MNS queue messages live: the database (embedded default) or Redis (distributed mode,
``OPENIMM_REDIS_URL``). Queue definitions stay in the database in both modes; only messages
move. Both stores give the same semantics (visibility timeout, receipt handles, DequeueCount,
dead-letter, idempotent put per MessageId)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from pipeline.db import Database
from pipeline.models import MnsQueue
from pipeline.notify import queues
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


class DbMessageStore:
    """Messages as rows (``mns_messages``): the embedded default, no server needed."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
            return message.message_id, message.body_md5

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


def open_message_store(settings: Settings, db: Database) -> MessageStore:
    if settings.redis_url:
        from pipeline.notify.redis_store import RedisMessageStore

        return RedisMessageStore.from_url(settings.redis_url)
    return DbMessageStore(db)
