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


def _claimed(db: Database, topic: str = "") -> tasks.Claim:
    spec = tasks.NewTask(
        task_type="ImageClassification",
        queue="image",
        request={"Sources": [{"URI": "oss://b/x.jpg"}]},
        notification={"MNS": {"TopicName": topic}} if topic else {},
        user_data="ud",
    )
    with db.session() as s:
        task, _ = tasks.create(s, projects.get_project(s, "owner", "p"), spec, request_id="r")
    with db.statement() as s:
        job = tasks.claim(s, task.id, "w1", 60)
    assert job is not None
    return job


def _row_and_event(db: Database, task_id: str) -> tuple[dict[str, object], dict[str, object]]:
    with db.session() as s:
        task = s.get(Task, task_id)
        event = s.scalars(select(Event).where(Event.task_id == task_id)).one()
        assert task is not None and event.id == task.event_id
        row = {c: getattr(task, c) for c in ("status", "code", "message", "progress", "result")}
        row["ended"] = task.end_time is not None and task.lease_expires_at is None
        times = ("TaskId", "StartTime", "EndTime", "RequestId")
        content = {k: v for k, v in event.content.items() if k not in times}
        return row, {"type": event.type, "topic": event.topic, "content": content}


@pytest.mark.parametrize("topic", ["", "t"])
def test_the_one_statement_success_writes_what_finalize_writes(db: Database, topic: str) -> None:
    """The worker's common end (``finish_claimed``: a data-modifying CTE built from the
    claim) leaves the same row and outbox event as the two-statement ``finalize``."""
    result = {"Images": [{"URI": "oss://b/x.jpg", "Class": 1}], "BatchSize": 1}
    one, two = _claimed(db, topic), _claimed(db, topic)
    with db.statement() as s:
        assert tasks.finish_claimed(s, one, result)
    with db.session() as s:
        assert tasks.finalize(s, two.task_id, "Succeeded", result=result, started_at=two.start_time)
    assert _row_and_event(db, one.task_id) == _row_and_event(db, two.task_id)
    row, event = _row_and_event(db, one.task_id)
    assert row["status"] == "Succeeded" and row["progress"] == 100 and row["ended"]
    assert (event["content"].get("Images") == result["Images"]) == bool(topic)  # type: ignore[attr-defined]


def test_the_one_statement_success_loses_to_an_earlier_end(db: Database) -> None:
    """A cancel (or another delivery's end) that came first wins: no second event."""
    job = _claimed(db)
    with db.session() as s:
        assert tasks.finalize(s, job.task_id, "Cancelled", started_at=job.start_time)
    with db.statement() as s:
        assert not tasks.finish_claimed(s, job, {"N": 1})
    row, _ = _row_and_event(db, job.task_id)  # .one(): exactly one event
    assert row["status"] == "Cancelled" and row["result"] == {}


def test_concurrent_one_statement_and_two_statement_ends_write_once(db: Database) -> None:
    job = _claimed(db)

    def finish(i: int) -> bool:
        if i % 2:
            with db.statement() as s:
                return tasks.finish_claimed(s, job, {"by": "cte"})
        with db.session() as s:
            return tasks.finalize(
                s, job.task_id, "Failed", code="X", message="m", started_at=job.start_time
            )

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(finish, range(16)))
    assert outcomes.count(True) == 1
    row, _ = _row_and_event(db, job.task_id)
    assert row["status"] in ("Succeeded", "Failed")
    assert (row["result"] == {"by": "cte"}) == (row["status"] == "Succeeded")


def test_the_one_statement_create_runs_in_postgres(db: Database) -> None:
    spec = tasks.NewTask("Diagnostic", "default", {"Mode": "Noop"}, tags={"k": "v"})
    with db.statement() as s:
        ids = tasks.create_unkeyed(s, "owner", "p", spec, request_id="r")
        assert tasks.create_unkeyed(s, "owner", "missing", spec, request_id="r") is None
    assert ids is not None
    with db.statement() as s:
        task = tasks.peek(s, ids[0])
    assert task is not None and task.event_id == ids[1] and task.tags == {"k": "v"}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Task)) == 1
