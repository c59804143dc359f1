"""The MNS message store contract, on the database store and on real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline import migrate
from pipeline.db import Database
from pipeline.errors import MessageNotExist, ReceiptHandleError
from pipeline.models import MnsQueue
from pipeline.notify import queues
from pipeline.notify.redis_store import RedisMessageStore
from pipeline.notify.store import DbMessageStore, MessageStore
from pipeline.settings import Settings
from tests.e2e.stack import wait_until


@pytest.fixture(params=["db", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[MessageStore, Database]]:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings.db_url)
    db = Database.from_settings(settings)
    if request.param == "db":
        yield DbMessageStore(db), db
    else:
        url = request.getfixturevalue("redis_url")
        yield RedisMessageStore(redis.Redis.from_url(url)), db


def _queues(db: Database, vt: int = 1) -> tuple[MnsQueue, MnsQueue]:
    with db.session() as s:
        queues.create_queue(s, "AK1", "work", {"VisibilityTimeout": str(vt)})
        queue = queues.get_queue(s, "AK1", "work")
        return queue, queues.dead_letter_queue(s, queue)


@pytest.mark.integration
def test_store_contract(store: tuple[MessageStore, Database]) -> None:
    messages, db = store
    queue, dead = _queues(db, vt=30)
    mid, md5 = messages.put(queue, "first", message_id="M1")
    assert (mid, len(md5)) == ("M1", 32)
    messages.put(queue, "second")
    got = messages.receive(queue, dead, 0)
    assert got is not None and (got.message_id, got.body, got.dequeue_count) == ("M1", "first", 1)
    assert messages.counts(queue) == (1, 1)
    other = messages.receive(queue, dead, 0)
    assert other is not None and other.body == "second"
    assert messages.receive(queue, dead, 0) is None  # both invisible now
    new_handle, _ = messages.change_visibility(queue, got.receipt_handle, 30)
    with pytest.raises(ReceiptHandleError):
        messages.delete(queue, got.receipt_handle)  # replaced by change_visibility
    messages.delete(queue, new_handle)
    messages.delete(queue, other.receipt_handle)
    assert messages.counts(queue) == (0, 0)


@pytest.mark.integration
def test_messages_put_within_one_millisecond_are_received_in_order(
    store: tuple[MessageStore, Database],
) -> None:
    """Many puts share a millisecond; Redis orders equal scores by member (a random message
    id), which received 'second' before 'first' now and then (a flaky CI failure)."""
    messages, db = store
    queue, dead = _queues(db, vt=30)
    bodies = [f"m{i}" for i in range(60)]
    for body in bodies:
        messages.put(queue, body)
    got = [messages.receive(queue, dead, 0) for _ in bodies]
    assert [r.body if r else None for r in got] == bodies
    assert messages.receive(queue, dead, 0) is None


@pytest.mark.integration
def test_store_redelivery_and_dead_letter(store: tuple[MessageStore, Database]) -> None:
    messages, db = store
    queue, dead = _queues(db, vt=1)
    messages.put(queue, "poison")
    first = messages.receive(queue, dead, 2)
    assert first is not None and first.dequeue_count == 1
    # poll until the 1 s visibility timeout lapses and the message is receivable again
    second = wait_until(lambda: messages.receive(queue, dead, 2), 10, 0.05, "redelivery")
    assert second is not None and second.dequeue_count == 2
    assert second.receipt_handle != first.receipt_handle
    with pytest.raises((ReceiptHandleError, MessageNotExist)):
        messages.delete(queue, first.receipt_handle)
    # on its third receive it moves to the dead-letter queue instead of being returned
    moved = wait_until(
        lambda: messages.receive(queue, dead, 2) or messages.receive(dead, None, 0),
        10,
        0.05,
        "dead-lettered",
    )
    assert moved is not None and moved.body == "poison" and moved.dequeue_count == 1
