"""Broker-side behaviour without servers: Redis transport on fakeredis, embedded filesystem
broker depth, and the embedded restart recovery."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from kombu.transport import redis as kombu_redis

from pipeline import migrate, projects, queue, tasks
from pipeline.db import Database
from pipeline.ids import utcnow
from pipeline.server import recover_embedded
from pipeline.settings import Settings


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeServer:
    """One fake Redis that every kombu Redis channel of the test talks to."""
    fake = fakeredis.FakeServer()

    def fake_client(self: Any, asynchronous: bool = False) -> fakeredis.FakeRedis:
        return fakeredis.FakeRedis(server=fake)

    monkeypatch.setattr(kombu_redis.Channel, "_create_client", fake_client)
    return fake


def test_redis_path_on_fakeredis(server: fakeredis.FakeServer, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://fake:6379/0")
    app = queue.make_celery(settings)
    for i in range(3):
        queue.enqueue(app, f"FileCompression-{i}", "FileCompression", "archive", settings)
    assert queue.queue_depths(app, settings)["archive"] == 3
    raw = fakeredis.FakeRedis(server=server).lindex("archive", 0)
    assert raw is not None and b"openimm.run" in raw


def test_filesystem_broker_depth_and_recovery(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # the embedded default: SQLite + filesystem broker
    migrate.upgrade(settings.db_url)
    db = Database.from_settings(settings)
    with db.session() as s:
        project = projects.create_project(s, "o", "p", {})
        ids = [
            tasks.create(s, project, tasks.NewTask("Diagnostic", "default", {}), request_id="r")[
                0
            ].id
            for _ in range(3)
        ]
    app = queue.make_celery(settings)
    queue.enqueue(app, ids[0], "Diagnostic", "default", settings)  # still queued
    with db.session() as s:
        tasks.finalize(s, ids[2], tasks.SUCCEEDED, started_at=utcnow())  # must not come back
    assert queue.queue_depths(app, settings)["default"] == 1
    # ids[1] is Running but its message is gone (the machine stopped mid-job)
    assert recover_embedded(settings, db) == 1
    assert queue.queue_depths(app, settings)["default"] == 2
    assert recover_embedded(settings, db) == 0  # idempotent


def test_unclaimed_redis_delivery_of_a_dead_worker_goes_back(
    server: fakeredis.FakeServer, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://fake:6379/0")
    app = queue.make_celery(settings)
    for task_id in ("Diagnostic-old", "Diagnostic-new"):
        queue.enqueue(app, task_id, "Diagnostic", "default", settings)
    raw = fakeredis.FakeRedis(server=server)
    # A worker took both messages (unacknowledged); it died before claiming the old one.
    for tag, age in (("tag-old", 120), ("tag-new", 1)):
        message = raw.rpop("default")
        assert message is not None
        raw.hset("unacked", tag, json.dumps([json.loads(message), "", "default"]))
        raw.zadd("unacked_index", {tag: time.time() - age})
    assert queue.queued_task_ids(app, settings) == {"Diagnostic-old", "Diagnostic-new"}

    asked: list[set[str]] = []

    def unclaimed(ids: set[str]) -> set[str]:
        asked.append(ids)
        return ids

    assert queue.restore_unclaimed(app, settings, unclaimed, older_than=30) == 1
    assert asked == [{"Diagnostic-old"}]  # the fresh delivery is left to its live worker
    assert raw.llen("default") == 1 and raw.hkeys("unacked") == [b"tag-new"]


def test_embedded_broker_is_polled_often(tmp_path: Path) -> None:
    """An idle worker looks for a job every OPENIMM_BROKER_POLL_INTERVAL_SECONDS (kombu's 1 s
    default put ~0.5 s of dead time before each short job)."""
    settings = Settings(data_dir=tmp_path)
    app = queue.make_celery(settings)
    with app.connection_for_read() as conn:
        assert conn.transport.polling_interval == 0.05
    slower = queue.make_celery(Settings(data_dir=tmp_path, broker_poll_interval_seconds=0.5))
    with slower.connection_for_read() as conn:
        assert conn.transport.polling_interval == 0.5


def test_embedded_broker_never_shows_a_half_written_message(tmp_path: Path) -> None:
    """A worker polling the queue folder while a message is being written must not take it:
    the file appears (by rename) only once complete. (kombu's own filesystem transport creates
    the file empty and then writes it; a poll in between took it, failed to decode it and the
    message was lost.)"""
    from kombu import Connection

    from pipeline import fsbroker

    settings = Settings(data_dir=tmp_path)
    queue.make_celery(settings)  # registers the transport, makes the broker folders
    with Connection("openimm-fs://", transport_options=queue._transport_options(settings)) as c:
        channel = c.default_channel
        polled: list[object] = []
        real_dumps = fsbroker.dumps

        def dumps_while_polled(payload: object) -> str:
            try:  # another worker polls while the file is open for writing
                polled.append(channel._get("archive"))
            except Exception as exc:
                polled.append(type(exc).__name__)
            return str(real_dumps(payload))

        fsbroker.dumps = dumps_while_polled  # type: ignore[assignment]
        try:
            channel._put("archive", {"body": "x" * 100_000})
        finally:
            fsbroker.dumps = real_dumps  # type: ignore[assignment]
        assert polled == ["Empty"]  # nothing visible mid-write
        assert channel._get("archive") == {"body": "x" * 100_000}
        assert not os.listdir(settings.broker_folder / "queue")


def test_embedded_broker_binds_queues_concurrently_on_a_fresh_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a fresh data dir, when several API threads submit their first tasks at once
    (each binding its queue to the exchange) and a thread is preempted between opening the
    exchange table and locking it, then every bind succeeds and the table lists every queue.
    (kombu's filesystem transport creates the table file before it locks it, so another
    binder read it empty: a JSONDecodeError, answered 503 ServiceUnavailable, on the first
    `openimm demo`.)"""
    from concurrent.futures import ThreadPoolExecutor

    from kombu import Connection
    from kombu.transport import filesystem

    real_lock = filesystem.lock

    def slow_lock(handle: Any, flags: int) -> None:
        time.sleep(0.05)  # the scheduler runs another binder here
        real_lock(handle, flags)

    monkeypatch.setattr(filesystem, "lock", slow_lock)
    settings = Settings(data_dir=tmp_path)
    queue.make_celery(settings)
    options = queue._transport_options(settings)
    names = [f"q{i}" for i in range(6)]

    def bind(name: str) -> None:
        with Connection("openimm-fs://", transport_options=options) as c:
            c.default_channel._queue_bind("celery", name, "", name)

    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(bind, names))
    with Connection("openimm-fs://", transport_options=options) as c:
        table = c.default_channel.get_table("celery")
    assert sorted(q.queue for q in table) == names


def test_a_reconnected_worker_gives_back_what_it_lost_with_the_connection(
    server: fakeredis.FakeServer, tmp_path: Path
) -> None:
    from workers.redelivery import give_back_dropped

    settings = Settings(data_dir=tmp_path, broker_url="redis://fake:6379/0")
    migrate.upgrade(settings.db_url)
    db = Database.from_settings(settings)
    with db.session() as s:
        project = projects.create_project(s, "o", "p", {})
        new = tasks.NewTask("Diagnostic", "default", {})
        dropped, running, fresh = (
            tasks.create(s, project, new, request_id="r")[0].id for _ in range(3)
        )
    app = queue.make_celery(settings)
    for task_id in (dropped, running, fresh):
        queue.enqueue(app, task_id, "Diagnostic", "default", settings)
    with db.session() as s:
        assert tasks.claim(s, running, "w@host", 30) is not None  # a live worker runs it
    # Given deliveries of all three, two of them made before the connection was lost
    raw = fakeredis.FakeRedis(server=server)
    lost_at = time.time()  # the tasks were created before: their deliveries came before it
    for tag, delivered in (("t1", lost_at - 0.5), ("t2", lost_at - 0.5), ("t3", lost_at + 0.5)):
        message = raw.rpop("default")
        assert message is not None
        raw.hset("unacked", tag, json.dumps([json.loads(message), "", "default"]))
        raw.zadd("unacked_index", {tag: delivered})
    # When the worker is connected again, only the unclaimed delivery from before the loss
    # goes back to its queue; the claimed one and the one delivered since stay with their
    # workers
    assert give_back_dropped(app, settings, db, lost_at) == 1
    assert queue.queued_task_ids(app, settings) >= {dropped}
    assert raw.llen("default") == 1 and sorted(raw.hkeys("unacked")) == [b"t2", b"t3"]
    assert give_back_dropped(app, settings, db, lost_at) == 0  # idempotent


def test_the_jobs_of_a_dead_pool_process_are_queued_again_at_once(tmp_path: Path) -> None:
    from pipeline import leases
    from pipeline.models import Task

    settings = Settings(data_dir=tmp_path)  # the embedded broker: its depth is countable
    migrate.upgrade(settings.db_url)
    db = Database.from_settings(settings)
    with db.session() as s:
        project = projects.create_project(s, "o", "p", {})
        new = tasks.NewTask("Diagnostic", "default", {})
        dead_job, live_job = (tasks.create(s, project, new, request_id="r")[0].id for _ in "ab")
    with db.session() as s:
        assert tasks.claim(s, dead_job, "host:101", 30) is not None
        assert tasks.claim(s, live_job, "host:202", 30) is not None
    app = queue.make_celery(settings)
    # When the supervisor saw process 101 exit, only its job goes back, lease released
    assert leases.requeue_held_by(settings, db, app, "host:101") == 1
    assert queue.queue_depths(app, settings)["default"] == 1
    with db.session() as s:
        dead, live = s.get(Task, dead_job), s.get(Task, live_job)
        assert dead is not None and live is not None
        assert (dead.status, dead.worker, dead.lease_expires_at) == ("Running", "", None)
        assert live.worker == "host:202" and live.lease_expires_at is not None
    assert leases.requeue_held_by(settings, db, app, "host:101") == 0  # nothing held any more
