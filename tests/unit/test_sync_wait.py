"""Synchronous calls wait for their task by push: ``wait_for_task`` sleeps on the hub and is
woken, in ``openimm serve``, by the dispatcher thread reading the task's terminal event. The
fallback re-read interval is set far beyond the test, so only the push can end the wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pipeline import migrate, projects, tasks
from pipeline.api.services import Caller, Services
from pipeline.api.submission import Created, enqueue_and_wait, wait_for_task
from pipeline.db import Database
from pipeline.errors import SyncTimeout
from pipeline.models import Task
from pipeline.notify import wake
from pipeline.notify.dispatcher import Dispatcher
from pipeline.outages import StillUnavailable
from pipeline.settings import Settings
from tests.e2e.stack import wait_until

CALLER = Caller(owner="AK1", request_id="r")


@pytest.fixture
def svc(tmp_path: Path) -> Services:
    settings = Settings(data_dir=tmp_path, sync_wait_fallback_seconds=3600)
    migrate.upgrade(settings.db_url)
    db = Database.from_settings(settings)
    with db.session() as s:
        projects.create_project(s, "AK1", "p", {})
    return cast(Services, SimpleNamespace(settings=settings, db=db))


def _running_task(db: Database) -> str:
    spec = tasks.NewTask(task_type="Diagnostic", queue="default", request={"Mode": "Noop"})
    with db.session() as s:
        task, _ = tasks.create(s, projects.get_project(s, "AK1", "p"), spec, request_id="r")
        return task.id


def _finish(db: Database, task_id: str) -> None:
    with db.session() as s:
        task = s.get(Task, task_id)
        assert task is not None
        assert tasks.finalize(s, task_id, tasks.SUCCEEDED, result={}, started_at=task.start_time)


def test_the_dispatcher_wakes_a_waiting_call_when_its_task_ends(svc: Services) -> None:
    task_id = _running_task(svc.db)
    done: list[tuple[float, str]] = []

    def waiting_call() -> None:
        task = wait_for_task(svc, CALLER, task_id, timeout=30)
        done.append((time.monotonic(), task.status))

    waiter = threading.Thread(target=waiting_call)
    waiter.start()
    wait_until(lambda: wake.HUB.waiting_count() == 1, timeout=10, what="the call waits")
    _finish(svc.db, task_id)
    time.sleep(0.3)  # the row alone (no wake-up, fallback 1 h) does not end the wait
    assert not done

    woken_at = time.monotonic()
    Dispatcher(svc.settings, svc.db).fan_out()  # the serve dispatcher's pass over the outbox
    waiter.join(timeout=5)
    assert done and done[0][1] == tasks.SUCCEEDED
    assert done[0][0] - woken_at < 1.0
    assert wake.HUB.waiting_count() == 0


def test_a_task_that_never_ends_times_out_at_the_deadline_not_the_fallback(
    svc: Services,
) -> None:
    task_id = _running_task(svc.db)
    started = time.monotonic()
    with pytest.raises(SyncTimeout):
        wait_for_task(svc, CALLER, task_id, timeout=0.2)
    assert time.monotonic() - started < 5
    with svc.db.session() as s:
        task = s.get(Task, task_id)
        assert task is not None and task.status != tasks.RUNNING  # cancelled


def test_a_task_that_ends_before_the_wait_starts_wakes_it_and_is_read_once(
    svc: Services,
) -> None:
    # Given a worker so fast that the task ends (and its event is dispatched) inside the
    # enqueue, before the call has even started to wait
    from sqlalchemy import event

    task_id = _running_task(svc.db)
    in_worker = threading.Event()

    def send_task(*_args: object, **_kwargs: object) -> None:
        in_worker.set()
        _finish(svc.db, task_id)
        Dispatcher(svc.settings, svc.db).fan_out()
        in_worker.clear()

    fast = cast(Services, SimpleNamespace(**vars(svc), celery=SimpleNamespace(send_task=send_task)))
    reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        selects = statement.lstrip().upper().startswith("SELECT")
        if selects and "FROM tasks" in statement and not in_worker.is_set():
            reads.append(statement)

    created = Created(task_id, "e", "Diagnostic", "default", created=True)
    event.listen(svc.db.engine, "before_cursor_execute", count)
    reads.clear()
    # When the call enqueues and waits (fallback re-read: 1 h)
    started = time.monotonic()
    task = enqueue_and_wait(fast, CALLER, created, timeout=30)
    event.remove(svc.db.engine, "before_cursor_execute", count)
    # Then the wake-up, registered before the enqueue, was not lost, and the row was read
    # once: after the wake-up, never before it
    assert task.status == tasks.SUCCEEDED
    assert time.monotonic() - started < 5
    assert len(reads) == 1, reads


def test_a_waiting_call_rides_out_a_database_outage_within_its_deadline(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a finished task whose first two reads meet a database that is away
    import psycopg

    task_id = _running_task(svc.db)
    _finish(svc.db, task_id)
    real_peek, failures = tasks.peek, [psycopg.OperationalError("connection refused")] * 2

    def peek(session: object, wanted: str) -> Task | None:
        if failures:
            raise failures.pop()
        return real_peek(session, wanted)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks, "peek", peek)
    # When the call reads it, then it is answered once the database is back
    assert wait_for_task(svc, CALLER, task_id, timeout=30).status == tasks.SUCCEEDED
    assert not failures
    # And a database that stays away past the deadline is an outage (503), not a hang
    failures.extend([psycopg.OperationalError("connection refused")] * 1000)
    started = time.monotonic()
    with pytest.raises(StillUnavailable):
        wait_for_task(svc, CALLER, task_id, timeout=0.3)
    assert time.monotonic() - started < 3


SAME = ("project_id", "owner", "project_name", "task_type", "queue", "status", "request")
SAME += ("user_data", "tags", "notification", "request_hash", "attempts", "result", "progress")


def test_the_one_statement_create_writes_what_create_writes(svc: Services) -> None:
    """``create_unkeyed`` (INSERT … SELECT from the project, no transaction around it) is
    ``create`` for a task without a ClientToken; ``peek`` reads it back detached."""
    spec = tasks.NewTask("Diagnostic", "default", {"Mode": "Noop"}, user_data="u", tags={"k": 1})
    with svc.db.statement() as s:
        ids = tasks.create_unkeyed(s, "AK1", "p", spec, request_id="r1")
    assert ids is not None
    with svc.db.session() as s:
        first, _ = tasks.create(s, projects.get_project(s, "AK1", "p"), spec, request_id="r2")
        first_cols = {c: getattr(first, c) for c in SAME}
    with svc.db.statement() as s:
        task = tasks.peek(s, ids[0])
    assert task is not None and (task.id, task.event_id) == ids
    assert {c: getattr(task, c) for c in SAME} == first_cols
    assert task.request_id == "r1" and task.start_time is not None


def test_the_one_statement_create_in_a_missing_project_writes_nothing(svc: Services) -> None:
    spec = tasks.NewTask("Diagnostic", "default", {"Mode": "Noop"})
    with svc.db.statement() as s:
        assert tasks.create_unkeyed(s, "AK1", "nope", spec, request_id="r") is None
        assert tasks.create_unkeyed(s, "AK2", "p", spec, request_id="r") is None  # not AK2's
        assert tasks.peek(s, "no-such-task") is None
    with svc.db.session() as s:
        assert s.query(Task).count() == 0
