"""Two dispatchers on one PostgreSQL outbox: every event is delivered once per subscription."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from pipeline import migrate, projects, tasks
from pipeline.db import Database
from pipeline.models import Delivery
from pipeline.notify import topics
from pipeline.notify.dispatcher import Dispatcher
from pipeline.settings import Settings
from tests.unit.test_notify import FAST, Receiver

pytestmark = pytest.mark.integration


def test_concurrent_dispatchers_deliver_each_event_once(fresh_database: str) -> None:
    settings = Settings(database_url=fresh_database, http_allow_private=True)
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url, pool_size=20)
    receiver = Receiver()
    with db.session() as s:
        project = projects.create_project(s, "AK1", "p", {})
        topic = topics.create_topic(s, "AK1", "t")
        for name in ("a", "b"):
            topics.subscribe(
                s,
                topic,
                name,
                endpoint=receiver.url,
                content_format="JSON",
                retry=FAST,
                allow_private=True,
            )
        for _ in range(40):
            task, _ = tasks.create(
                s,
                project,
                tasks.NewTask(
                    "Diagnostic", "default", {}, notification={"MNS": {"TopicName": "t"}}
                ),
                request_id="r",
            )
            s.flush()
            tasks.finalize(s, task.id, tasks.SUCCEEDED, started_at=task.start_time)
    dispatchers = [Dispatcher(settings, db) for _ in range(2)]
    stop = threading.Event()
    threads = [threading.Thread(target=d.run_forever, args=(stop,)) for d in dispatchers]
    for t in threads:
        t.start()
    deadline = threading.Event()
    for _ in range(300):
        if len(receiver.requests) >= 80:
            break
        deadline.wait(0.05)
    deadline.wait(0.5)  # give any duplicate a chance to show up
    stop.set()
    for t in threads:
        t.join(10)
    receiver.server.shutdown()
    pairs = [(h["webhook-id"], h["x-mns-message-id"]) for h, _ in receiver.requests]
    assert len(pairs) == 80
    with db.session() as s:
        assert set(s.scalars(select(Delivery.status))) == {"delivered"}
