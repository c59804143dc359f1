"""Task service guarantees under concurrency on real PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from pipeline import migrate, projects, tasks
from pipeline.db import Database
from pipeline.models import Event, Task
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def db(fresh_database: str) -> Database:
    url = Settings(database_url=fresh_database).db_url
    migrate.upgrade(url)
    database = Database(url, pool_size=20)
    with database.session() as s:
        projects.create_project(s, "owner", "p", {})
    return database


def _create(db: Database, token: str | None) -> str:
    spec = tasks.NewTask(
        task_type="Diagnostic", queue="default", request={"Mode": "Noop"}, client_token=token
    )
    with db.session() as s:
        project = projects.get_project(s, "owner", "p")
        task, _ = tasks.create(s, project, spec, request_id="r")
        return task.id


def test_concurrent_retries_with_one_client_token_create_one_task(db: Database) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: _create(db, "same-token"), range(16)))
    assert len(ids) == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Task)) == 1


def test_concurrent_finalizers_end_a_task_once_with_one_event(db: Database) -> None:
    task_id = _create(db, None)
    with db.session() as s:
        started = s.get(Task, task_id).start_time  # type: ignore[union-attr]

    def finish(status: str) -> bool:
        with db.session() as s:
            return tasks.finalize(s, task_id, status, result={"by": status}, started_at=started)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(finish, ["Succeeded", "Failed"] * 8))
    assert outcomes.count(True) == 1
    with db.session() as s:
        task = s.get(Task, task_id)
        assert task is not None and task.status in ("Succeeded", "Failed")
        assert task.result == {"by": task.status}
        assert task.duration_ms is not None and task.duration_ms >= 0
        events = s.scalars(select(Event).where(Event.task_id == task_id)).all()
        assert len(events) == 1 and events[0].id == task.event_id
        assert events[0].content["Status"] == task.status
        assert events[0].type == "imm:Task:Diagnostic"


def test_only_an_event_that_will_be_delivered_carries_the_results(db: Database) -> None:
    """The result goes into the outbox only for a task naming an MNS topic; it is the
    caller's own result (not read back from the row) in both places."""
    ids = {}
    for topic in ("", "t"):
        spec = tasks.NewTask(
            task_type="Diagnostic",
            queue="default",
            request={},
            notification={"MNS": {"TopicName": topic}} if topic else {},
        )
        with db.session() as s:
            task, _ = tasks.create(s, projects.get_project(s, "owner", "p"), spec, request_id="r")
            ids[topic] = task.id
        with db.session() as s:
            started = s.get(Task, task.id).start_time  # type: ignore[union-attr]
            assert tasks.finalize(s, task.id, "Succeeded", result={"N": 1}, started_at=started)
    with db.session() as s:
        content = {
            ev.topic: ev.content
            for ev in s.scalars(select(Event).where(Event.task_id.in_(ids.values())))
        }
        assert all(s.get(Task, i).result == {"N": 1} for i in ids.values())  # type: ignore[union-attr]
    assert content["t"]["N"] == 1 and content["t"]["TaskId"] == ids["t"]
    assert "N" not in content[""] and content[""]["Status"] == "Succeeded"
    assert content[""]["TaskId"] == ids[""]


def test_tag_selector_runs_in_postgres(db: Database) -> None:
    spec = tasks.NewTask(task_type="Diagnostic", queue="default", request={}, tags={"k": "v"})
    with db.session() as s:
        project = projects.get_project(s, "owner", "p")
        tagged, _ = tasks.create(s, project, spec, request_id="r")
        _create(db, None)
        rows, _ = tasks.list_tasks(
            s,
            project,
            tasks.TaskFilter(tag=("k", "v")),
            sort="TaskId",
            order="asc",
            max_results=10,
            next_token="",
        )
        assert [r.id for r in rows] == [tagged.id]
