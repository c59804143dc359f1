"""Reliability without servers: which errors are outages, the retry loop, the lease reaper and
the doctor's invariant, and the API's 503/500 answers (given inside the app)."""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError as BotoClientError
from botocore.exceptions import EndpointConnectionError
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import event, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline import leases, migrate, projects, queue, tasks
from pipeline.api import mns, rpc
from pipeline.client import ClientError, ImmClient
from pipeline.db import Database
from pipeline.errors import InvalidArgument, StorageError
from pipeline.ids import utcnow
from pipeline.models import Task
from pipeline.outages import (
    BROKER,
    DATABASE,
    OBJECT_STORE,
    REDIS,
    Backoff,
    OutageLog,
    StillUnavailable,
    dependency_of,
    retrying,
)
from pipeline.settings import Settings
from workers.heartbeat import Heartbeat


def _pg_down() -> OperationalError:
    orig = psycopg.OperationalError("connection refused")
    return OperationalError("SELECT 1", {}, orig)


def _wrapped_storage_error() -> StorageError:
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://minio:9000")
        except EndpointConnectionError as exc:
            raise StorageError("Object store error on oss://b/k") from exc
    except StorageError as exc:
        return exc


# ---- classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (_pg_down(), DATABASE),
        (psycopg.OperationalError("server closed the connection"), DATABASE),
        (OperationalError("x", {}, sqlite3.OperationalError("database is locked")), DATABASE),
        (RedisConnectionError("Connection refused"), REDIS),
        (KombuOperationalError("Error 111 connecting"), BROKER),
        (EndpointConnectionError(endpoint_url="http://minio:9000"), OBJECT_STORE),
        (_wrapped_storage_error(), OBJECT_STORE),
        (
            BotoClientError({"Error": {"Code": "SlowDown"}}, "PutObject"),
            OBJECT_STORE,
        ),
    ],
)
def test_infrastructure_errors_name_their_dependency(exc: BaseException, dependency: str) -> None:
    assert dependency_of(exc) == dependency


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad frame"),
        InvalidArgument("no such codec"),
        StorageError("Object store error on oss://b/k: AccessDenied"),
        OperationalError("x", {}, sqlite3.OperationalError("no such table: tasks")),
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        BotoClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"),
        ConnectionRefusedError("the task's own http input"),
    ],
)
def test_task_errors_are_not_outages(exc: BaseException) -> None:
    assert dependency_of(exc) is None


# ---- retrying ------------------------------------------------------------------------------


def test_retrying_waits_out_an_outage_and_logs_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 5:
            raise _pg_down()
        return "done"

    outages = OutageLog(logging.getLogger("test.outage"))
    with caplog.at_level(logging.WARNING, "test.outage"):
        assert retrying(flaky, outages, give_up_after=60, sleep=sleeps.append) == "done"
    assert len(calls) == 5 and sleeps == [0.1, 0.2, 0.4, 0.8]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("database unavailable") and lines[1].startswith("database back")


def test_retrying_gives_up_after_the_deadline_and_passes_task_errors_at_once() -> None:
    outages = OutageLog(logging.getLogger("test.outage"))

    def down() -> None:
        raise _pg_down()

    with pytest.raises(StillUnavailable) as info:
        retrying(down, outages, give_up_after=0, sleep=lambda _: None)
    assert info.value.dependency == DATABASE

    def broken() -> None:
        raise ValueError("the task's own bug")

    with pytest.raises(ValueError):
        retrying(broken, outages, give_up_after=60, sleep=lambda _: pytest.fail("slept"))


def test_backoff_is_capped() -> None:
    backoff = Backoff(first=1, cap=5)
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next() == 1


# ---- leases, reaper, doctor ------------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> tuple[Settings, Database]:
    settings = Settings(data_dir=tmp_path, reaper_interval_seconds=1)
    migrate.upgrade(settings.db_url)
    return settings, Database.from_settings(settings)


def _new_tasks(db: Database, n: int) -> list[str]:
    with db.session() as s:
        project = projects.create_project(s, "o", "p", {})
        spec = tasks.NewTask("Diagnostic", "default", {})
        return [tasks.create(s, project, spec, request_id="r")[0].id for _ in range(n)]


def test_reaper_requeues_only_expired_leases_and_fences_the_old_holder(
    embedded: tuple[Settings, Database],
) -> None:
    settings, db = embedded
    live, dead = _new_tasks(db, 2)
    with db.session() as s:
        assert tasks.claim(s, live, "host:1", lease_seconds=30) is not None
        assert tasks.claim(s, dead, "host:2", lease_seconds=-1) is not None  # its worker died
    app = queue.make_celery(settings)
    reaper = leases.Reaper(settings, db, app)

    assert reaper.run_once() == 1
    assert queue.queued_task_ids(app, settings) == {dead}
    with db.session() as s:
        row = s.execute(select(Task.lease_expires_at, Task.worker).where(Task.id == dead)).one()
        assert tuple(row) == (None, "")
        # The late original can neither renew nor report: it stops at its next report.
        assert tasks.renew_leases(s, "host:2", {dead}, 30) == set()
        assert not tasks.set_progress(s, dead, 50, worker="host:2")
        assert tasks.renew_leases(s, "host:1", {live}, 30) == {live}
    assert reaper.run_once() == 0  # queued again: not reaped twice

    with db.session() as s:  # the new delivery takes the lease over
        claim = tasks.claim(s, dead, "host:3", lease_seconds=30)
        assert claim is not None and claim.attempts == 2
        assert tasks.renew_leases(s, "host:3", {dead}, 30) == {dead}


def test_reaper_runs_at_most_once_per_interval(embedded: tuple[Settings, Database]) -> None:
    settings, db = embedded
    (task_id,) = _new_tasks(db, 1)
    reaper = leases.Reaper(settings, db)
    with db.session() as s:
        tasks.claim(s, task_id, "host:1", lease_seconds=-1)
    assert reaper.maybe_run(100.0) == 1
    with db.session() as s:
        tasks.claim(s, task_id, "host:1", lease_seconds=-1)
    assert reaper.maybe_run(100.5) == 0  # within the interval
    assert reaper.maybe_run(101.0) == 1


def test_heartbeat_renews_in_one_statement_and_notices_a_takeover(
    embedded: tuple[Settings, Database],
) -> None:
    _, db = embedded
    mine, other = _new_tasks(db, 2)
    with db.session() as s:
        tasks.claim(s, mine, "host:1", lease_seconds=1)
        tasks.claim(s, other, "host:1", lease_seconds=1)
    beat = Heartbeat(db, "host:1", OutageLog(logging.getLogger("t")), lease_seconds=30, interval=60)
    beat._held = {mine, other}  # as hold() would, without starting the thread
    with db.session() as s:  # `other` was reaped and another worker claimed it
        s.execute(update(Task).where(Task.id == other).values(worker="host:9"))
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    beat.beat()
    assert sum(st.lstrip().upper().startswith("UPDATE") for st in statements) == 1
    assert not beat.lost(mine) and beat.lost(other)
    with db.session() as s:
        expires = s.scalar(select(Task.lease_expires_at).where(Task.id == mine))
    assert expires is not None and expires > utcnow() + timedelta(seconds=20)


def test_doctor_finds_a_running_task_with_neither_lease_nor_message(
    embedded: tuple[Settings, Database],
) -> None:
    settings, db = embedded
    leased, queued, lost, done = _new_tasks(db, 4)
    app = queue.make_celery(settings)
    queue.enqueue(app, queued, "Diagnostic", "default", settings)
    old = utcnow() - timedelta(minutes=5)
    with db.session() as s:
        tasks.claim(s, leased, "host:1", lease_seconds=30)
        tasks.finalize(s, done, tasks.SUCCEEDED, started_at=utcnow())
        s.execute(update(Task).where(Task.id.in_([queued, lost])).values(start_time=old))
    report = leases.check(settings, db, app)
    assert (report.leased, report.queued, report.lost, report.overdue) == (1, 1, [lost], [])
    assert not report.ok

    with db.session() as s:  # a lease long expired and no reaper running
        s.execute(update(Task).where(Task.id == leased).values(lease_expires_at=old))
    assert leases.check(settings, db, app).overdue == [leased]
    leases.Reaper(settings, db, app).run_once()
    queue.enqueue(app, lost, "Diagnostic", "default", settings)
    assert leases.check(settings, db, app).ok


# ---- the API answers outages with 503, and never re-raises -------------------------------------


def test_database_outage_is_a_503_in_imm_json(
    imm: ImmClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any) -> dict[str, Any]:
        raise _pg_down()

    monkeypatch.setitem(rpc.ACTIONS, "ListProjects", rpc.Action(down, frozenset()))
    with pytest.raises(ClientError) as info:
        imm.call("ListProjects")
    assert info.value.status == 503 and info.value.code == "ServiceUnavailable"
    assert info.value.body["RequestId"] and "database" in info.value.body["Message"]


def test_retry_after_header_and_mns_xml_shape(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any) -> str:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(mns, "_owner", down)
    response = app_client.get("/queues")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "<Code>ServiceUnavailable</Code>" in response.text and "<Error" in response.text


def test_unexpected_error_is_a_500_answered_inside_the_app(
    app_client: TestClient, imm: ImmClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TestClient re-raises what escapes the app (as uvicorn then drops the connection)."""

    def bug(*_: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setitem(rpc.ACTIONS, "ListProjects", rpc.Action(bug, frozenset()))
    with pytest.raises(ClientError) as info:
        imm.call("ListProjects")
    assert info.value.status == 500 and info.value.code == "InternalError"
    assert "a bug" not in str(info.value.body)
