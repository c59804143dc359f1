"""Task service: create (idempotent), read, list, cancel, and the worker-side transitions.

Every terminal transition is a compare-and-set on ``status = 'Running'`` written together with
its outbox ``Event`` row in one transaction, so a task ends exactly once and its notification
can never be lost or sent for a rolled-back state, however often the job is redelivered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline import jobs, paging
from pipeline.errors import (
    IdempotentParameterMismatch,
    InvalidParameter,
    ResourceNotFound,
    StatusConflict,
)
from pipeline.ids import event_id, resource_time, task_id, task_time, utcnow
from pipeline.models import Event, Project, Task

RUNNING, SUCCEEDED, FAILED, CANCELLED = "Running", "Succeeded", "Failed", "Cancelled"
STATUSES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)
# GetTask/notification ``Message`` of a Succeeded task: "" (reference §2.4, MediaConvert) except
# where IMM's samples show a text (declared per kind: seed 004's FigureClustering says "Success").
SUCCESS_MESSAGES: dict[str, str] = {
    k.task_type: k.success_message for k in jobs.KINDS if k.success_message
}
# Jobs that IMM does not list as tasks (IndexFileMeta/BatchIndexFileMeta run as internal tasks
# for retries, outbox and progress): ListTasks shows them only when asked by type.
INTERNAL_TASK_TYPES = jobs.UNLISTED_TYPES
FILE_META_PREFIX = "imm:FileMeta:"
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
# The worker hot path (claim, finalize) uses Core statements on these tables: no ORM identity
# map or entity construction per job.
TASKS = cast(Table, Task.__table__)
EVENTS = cast(Table, Event.__table__)


@dataclass
class NewTask:
    """What an API handler hands to :func:`create`."""

    task_type: str
    queue: str
    request: dict[str, Any]
    user_data: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    notification: dict[str, Any] = field(default_factory=dict)
    dataset_name: str = ""
    client_token: str | None = None


def event_type(task_type: str) -> str:
    """The notification type of a task type's completion (from its job-kind declaration)."""
    declared = jobs.BY_TYPE.get(task_type)
    return declared.event_type if declared else f"imm:Task:{task_type}"


def _request_hash(spec: NewTask) -> str:
    payload = [spec.task_type, spec.request, spec.user_data, spec.tags, spec.notification]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def create(
    session: Session, project: Project, spec: NewTask, *, request_id: str
) -> tuple[Task, bool]:
    """Insert a Running task; returns ``(task, created)``. A repeated ClientToken with the same
    request returns the first task (``created`` False) instead of creating a second one."""
    digest = _request_hash(spec)
    if spec.client_token:
        existing = _by_client_token(session, project, spec.client_token)
        if existing is not None:
            return _same_request(existing, digest), False
    task = Task(
        project_id=project.id,
        owner=project.owner,
        project_name=project.name,
        **_new_row(spec, request_id, digest),
    )
    if not spec.client_token:
        session.add(task)  # no unique key can clash: skip the savepoint round trips
        return task, True
    try:
        with session.begin_nested():
            session.add(task)
    except IntegrityError:
        # A concurrent retry with the same ClientToken won the race.
        existing = _by_client_token(session, project, spec.client_token or "")
        if existing is None:
            raise
        return _same_request(existing, digest), False
    return task, True


def create_unkeyed(
    session: Session, owner: str, project_name: str, spec: NewTask, *, request_id: str
) -> tuple[str, str] | None:
    """:func:`create` for a task without a ClientToken, in ONE statement: ``INSERT INTO tasks
    … SELECT … FROM projects WHERE owner AND name RETURNING id``, atomic by itself, so it
    runs in :meth:`Database.statement` without the BEGIN, project read and COMMIT round
    trips. ``(task id, event id)``; ``None`` when the owner has no such project (nothing
    written)."""
    assert not spec.client_token, "a ClientToken needs create()'s idempotency check"
    row = _new_row(spec, request_id, _request_hash(spec))
    params = {f"b_{k}": v for k, v in row.items()}
    params.update(b_owner=owner, b_project_name=project_name)
    if session.connection().execute(_CREATE, params).one_or_none() is None:
        return None
    return row["id"], row["event_id"]


def _create_statement() -> Any:
    names = list(_new_row(NewTask("", "", {}), "", ""))
    project = cast(Table, Project.__table__).c
    source = select(
        *(_bind(TASKS, n).label(n) for n in names), project.id, project.owner, project.name
    ).where(project.owner == _bind(TASKS, "owner"), project.name == _bind(TASKS, "project_name"))
    return (
        TASKS.insert()
        .from_select([*names, "project_id", "owner", "project_name"], source)
        .returning(TASKS.c.id)
    )


def _new_row(spec: NewTask, request_id: str, digest: str) -> dict[str, Any]:
    """A new Running task's columns, but its project's."""
    return {
        "id": task_id(spec.task_type),
        "dataset_name": spec.dataset_name,
        "task_type": spec.task_type,
        "queue": spec.queue,
        "status": RUNNING,
        "start_time": utcnow(),
        "user_data": spec.user_data,
        "tags": spec.tags,
        "request": spec.request,
        "notification": spec.notification,
        "request_id": request_id,
        "event_id": event_id(),
        "client_token": spec.client_token,
        "request_hash": digest,
        "code": "",
        "message": "",
        "progress": 0,
        "result": {},
        "attempts": 0,
        "worker": "",
    }


def _by_client_token(session: Session, project: Project, token: str) -> Task | None:
    return session.scalar(
        select(Task).where(Task.project_id == project.id, Task.client_token == token)
    )


def _same_request(task: Task, digest: str) -> Task:
    if task.request_hash != digest:
        raise IdempotentParameterMismatch(
            "The ClientToken was already used for a different request."
        )
    return task


def get(session: Session, project: Project, task_id_: str, task_type: str = "") -> Task:
    task = session.scalar(select(Task).where(Task.project_id == project.id, Task.id == task_id_))
    if task is None or (task_type and task.task_type != task_type):
        raise ResourceNotFound("task", task_id_)
    return task


@dataclass
class TaskFilter:
    task_types: list[str] = field(default_factory=list)
    status: str = ""
    start_range: tuple[datetime | None, datetime | None] = (None, None)
    end_range: tuple[datetime | None, datetime | None] = (None, None)
    tag: tuple[str, str] | None = None


SORT_COLUMNS = {"TaskId": Task.id, "StartTime": Task.start_time, "EndTime": Task.end_time}


def list_tasks(
    session: Session,
    project: Project,
    filt: TaskFilter,
    *,
    sort: str,
    order: str,
    max_results: int,
    next_token: str,
) -> tuple[Sequence[Task], str]:
    """Keyset-paged listing; the token carries the last row's (sort value, TaskId)."""
    query = select(Task).where(Task.project_id == project.id, *_filters(filt))
    sort_col: Any = SORT_COLUMNS[sort]
    if sort == "EndTime":
        sort_col = func.coalesce(Task.end_time, FAR_FUTURE)  # running tasks sort last
    desc = order == "desc"
    after = paging.decode(next_token)
    if after:
        query = query.where(_after(sort, sort_col, after, desc))
    ordering = [sort_col.desc(), Task.id.desc()] if desc else [sort_col.asc(), Task.id.asc()]
    rows = list(session.scalars(query.order_by(*ordering).limit(max_results + 1)))
    page = rows[:max_results]
    token = paging.encode(_key(sort, page[-1])) if len(rows) > max_results else ""
    return page, token


def _filters(filt: TaskFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if filt.task_types:
        clauses.append(Task.task_type.in_(filt.task_types))
    else:  # IMM lists no index jobs; name FileMetaIndex/FileMetaBatchIndex to see them
        clauses.append(Task.task_type.not_in(sorted(INTERNAL_TASK_TYPES)))
    if filt.status:
        clauses.append(Task.status == filt.status)
    for column, (low, high) in (
        (Task.start_time, filt.start_range),
        (Task.end_time, filt.end_range),
    ):
        if low is not None:
            clauses.append(column >= low)
        if high is not None:
            clauses.append(column <= high)
    if filt.tag is not None:
        key, value = filt.tag
        # SQLAlchemy's generic JSON path comparator renders json_extract on SQLite and ->>
        # on PostgreSQL, so the same filter runs in the database on both.
        clauses.append(Task.tags[key].as_string() == value)
    return clauses


def _key(sort: str, task: Task) -> list[Any]:
    if sort == "TaskId":
        return [task.id]
    value = task.start_time if sort == "StartTime" else (task.end_time or FAR_FUTURE)
    return [value.isoformat(), task.id]


def _after(sort: str, sort_col: Any, after: list[Any], desc: bool) -> ColumnElement[bool]:
    try:
        if sort == "TaskId":
            return Task.id < str(after[0]) if desc else Task.id > str(after[0])
        value = datetime.fromisoformat(str(after[0]))
        last_id = str(after[1])
    except (IndexError, ValueError):
        raise InvalidParameter("NextToken", "The token does not match Sort.") from None
    if desc:
        return or_(sort_col < value, and_(sort_col == value, Task.id < last_id))
    return or_(sort_col > value, and_(sort_col == value, Task.id > last_id))


def peek(session: Session, task_id_: str) -> Task | None:
    """The task as it is now, for a caller waiting on its end: a detached, read-only copy.

    One prebuilt SELECT and no identity map: ``Session.get`` built, compiled and loaded its
    query through the ORM for every read (about 1 ms of a predict call's wait)."""
    row = session.connection().execute(_PEEK, {"b_id": task_id_}).one_or_none()
    return None if row is None else Task(**row._mapping)


# ---- worker-side transitions -------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What one delivery learns when it claims its task."""

    task_id: str
    task_type: str
    request: dict[str, Any]
    attempts: int
    start_time: datetime
    owner: str  # whose buckets the job may read and write
    # The rest of what the terminal event needs; set at creation and never changed, so a
    # successful run's end is written in one statement (:func:`finish_claimed`).
    project_name: str
    dataset_name: str
    user_data: str
    request_id: str
    event_id: str
    notification: dict[str, Any]

    def row(self) -> dict[str, Any]:
        """The claimed task's columns as :func:`message_content` reads them."""
        return {_CLAIM_COLUMN.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}


_CLAIM_COLUMN = {"task_id": "id"}  # Claim fields named otherwise than their column


def _bind(table: Table, column: str) -> Any:
    """A named parameter typed like ``table.column`` (``b_<column>``: a parameter may not
    take a column's own name in a SET clause)."""
    return bindparam(f"b_{column}", type_=table.c[column].type)


# The hot statements of a short task are built once: building and hashing a statement per
# call cost SQLAlchemy more than PostgreSQL spends running it.
_CLAIM = (
    TASKS.update()
    .where(TASKS.c.id == _bind(TASKS, "id"), TASKS.c.status == RUNNING)
    .values(
        attempts=TASKS.c.attempts + 1,
        worker=_bind(TASKS, "worker"),
        heartbeat_at=bindparam("b_now", type_=TASKS.c.heartbeat_at.type),
        lease_expires_at=bindparam("b_lease", type_=TASKS.c.lease_expires_at.type),
    )
    .returning(*(TASKS.c[_CLAIM_COLUMN.get(f.name, f.name)] for f in fields(Claim)))
)


def claim(session: Session, task_id_: str, worker: str, lease_seconds: float) -> Claim | None:
    """Count one more attempt for a delivery and take the task's lease for ``worker``;
    ``None`` when the task is already terminal (finished by an earlier delivery, or cancelled)
    so the redelivered message is dropped.

    Taking the lease moves ``worker`` to this delivery: an earlier holder still running (its
    task was reaped, or redelivered after a crash) can no longer renew the lease or report
    progress, so it stops at its next report; the terminal write is a compare-and-set, so at
    most one of them ends the task.
    """
    now = utcnow()
    lease = now + timedelta(seconds=lease_seconds)
    params = {"b_id": task_id_, "b_worker": worker, "b_now": now, "b_lease": lease}
    row = session.connection().execute(_CLAIM, params).one_or_none()
    return None if row is None else Claim(*row)


def renew_leases(
    session: Session, worker: str, task_ids: Collection[str], lease_seconds: float
) -> set[str]:
    """Extend the leases ``worker`` holds on ``task_ids`` (one statement for all of them);
    returns the ids still held. A missing id was reaped, re-claimed or ended meanwhile."""
    if not task_ids:
        return set()
    now = utcnow()
    rows = session.connection().execute(
        TASKS.update()
        .where(
            TASKS.c.id.in_(sorted(task_ids)),
            TASKS.c.status == RUNNING,
            TASKS.c.worker == worker,
        )
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(TASKS.c.id)
    )
    return {row[0] for row in rows}


def hold_running(session: Session, task_id_: str) -> bool:
    """Lock a Running task's row for the rest of the transaction; False if it is terminal.

    An UPDATE (not SELECT FOR UPDATE) so that SQLite takes its write lock now, before the
    caller reads the state it is about to change, and PostgreSQL serialises with CancelTask.
    """
    result = session.execute(
        update(Task)
        .where(Task.id == task_id_, Task.status == RUNNING)
        .values(heartbeat_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_progress(session: Session, task_id_: str, progress: int, worker: str = "") -> bool:
    """Store progress; returns False when the task is no longer Running (e.g. cancelled) or,
    with ``worker``, no longer held by that worker (its lease was reaped and re-claimed)."""
    query = update(Task).where(Task.id == task_id_, Task.status == RUNNING)
    if worker:
        query = query.where(Task.worker == worker)
    result = session.execute(
        query.values(progress=max(0, min(100, progress)), heartbeat_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finalize(
    session: Session,
    task_id_: str,
    status: str,
    *,
    code: str = "",
    message: str = "",
    result: dict[str, Any] | None = None,
    started_at: datetime,
) -> bool:
    """Running → terminal, once. Writes the outbox event in the same transaction.

    ``started_at`` (the task's StartTime, known to every caller from its claim or read) lets
    the duration be written in the same UPDATE: two statements per completion.
    """
    now = utcnow()
    values = _terminal_values(status, code, message, started_at, now)
    if status == SUCCEEDED:
        values["message"] = message or _success_message()
    # A result the caller gives is not read back: RETURNING it would send it to the worker
    # again and parse it once more (the 1000 class probabilities of a predict call, ~36 KB).
    columns = EVENT_COLUMNS if result is None else EVENT_COLUMNS_BUT_RESULT
    if result is not None:
        values["result"] = result
    row = (
        session.connection()
        .execute(
            TASKS.update()
            .where(TASKS.c.id == task_id_, TASKS.c.status == RUNNING)
            .values(**values)
            .returning(*columns)
        )
        .one_or_none()
    )
    if row is None:
        return False
    task = row._mapping if result is None else {**row._mapping, "result": result}
    session.connection().execute(EVENTS.insert().values(**_terminal_event(task)))
    return True


def finish_claimed(
    session: Session, job: Claim, result: dict[str, Any], *, message: str = ""
) -> bool:
    """:func:`finalize` to Succeeded for the worker that holds ``job``, in ONE statement on
    PostgreSQL: ``WITH done AS (UPDATE tasks … RETURNING id) INSERT INTO events SELECT …
    FROM done``. The event is built from the claim (its columns never change after
    creation), so nothing has to be read back, and one statement is atomic by itself: run it
    in :meth:`Database.statement`, without the BEGIN and COMMIT round trips. The event is
    inserted only if the compare-and-set matched (``False``: superseded, nothing written).
    SQLite has no data-modifying CTE: use :func:`finalize` there."""
    now = utcnow()
    values = _terminal_values(SUCCEEDED, "", message, job.start_time, now)
    values["message"] = message or SUCCESS_MESSAGES.get(job.task_type, "")
    values["result"] = result
    event = _terminal_event({**job.row(), **values})
    params = {f"b_{k}": v for k, v in values.items() if k != "lease_expires_at"}
    params.update({f"e_{k}": v for k, v in event.items()})
    params["b_id"] = job.task_id
    return session.connection().execute(_FINISH, params).one_or_none() is not None


def _finish_statement() -> Any:
    now = utcnow()
    written = [*_terminal_values(SUCCEEDED, "", "", now, now), "result"]
    set_ = {n: _bind(TASKS, n) for n in written if n != "lease_expires_at"}
    done = (
        TASKS.update()
        .where(TASKS.c.id == _bind(TASKS, "id"), TASKS.c.status == RUNNING)
        .values(**set_, lease_expires_at=None)
        .returning(TASKS.c.id)
        .cte("done")
    )
    # Every outbox column but the sequence and the dispatcher's published_at.
    names = [c.name for c in EVENTS.c if c.name not in ("seq", "published_at")]
    row = select(*(bindparam(f"e_{n}", type_=EVENTS.c[n].type).label(n) for n in names))
    return (
        EVENTS.insert()
        .from_select(names, row.select_from(done))
        .add_cte(done)  # a data-modifying CTE must be at the statement's top level
        .returning(EVENTS.c.id)
    )


def _terminal_values(
    status: str, code: str, message: str, started_at: datetime, now: datetime
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": status,
        "code": code,
        "message": message,
        "end_time": now,
        "heartbeat_at": now,
        "lease_expires_at": None,
        "duration_ms": int((now - started_at).total_seconds() * 1000),
    }
    if status == SUCCEEDED:
        values["progress"] = 100
    return values


def _success_message() -> Any:
    """The Succeeded ``Message`` of the row's task type, chosen in the UPDATE itself."""
    whens = [(TASKS.c.task_type == t, text) for t, text in SUCCESS_MESSAGES.items()]
    return case(*whens, else_="")


EVENT_COLUMNS = [
    getattr(TASKS.c, name)
    for name in (
        "id",
        "owner",
        "project_name",
        "dataset_name",
        "task_type",
        "status",
        "code",
        "message",
        "start_time",
        "end_time",
        "user_data",
        "request_id",
        "event_id",
        "notification",
        "result",
        "request",
    )
]
EVENT_COLUMNS_BUT_RESULT = [c for c in EVENT_COLUMNS if c.name != "result"]


def _terminal_event(task: Any) -> dict[str, Any]:
    """The outbox row for a terminal task (``task`` is a Task or a row with its columns)."""
    notification = task["notification"] or {}
    topic = (notification.get("MNS") or {}).get("TopicName", "")
    return {
        "id": task["event_id"],
        "owner": task["owner"],
        "project_name": task["project_name"],
        "type": event_type(task["task_type"]),
        "task_id": task["id"],
        "topic": topic,
        "content": message_content(task, results=bool(topic)),
        "created_at": utcnow(),
    }


def _content_head(task: Any) -> dict[str, Any]:
    """The keys both IMM content shapes (task and file-meta messages) start with."""
    return {
        "ProjectName": task["project_name"],
        "DatasetName": task["dataset_name"],
        "RequestId": task["request_id"],
        "StartTime": task_time(task["start_time"]),
        "EndTime": task_time(task["end_time"]),
        "UserData": task["user_data"],
    }


def message_content(task: Any, *, results: bool = True) -> dict[str, Any]:
    """Layer 3 of the IMM notification: the common keys, then task-specific results.

    ``results=False`` (the event of a task that names no MNS topic, which is never
    delivered) keeps the common keys only: the results are in the task row, and a copy in
    the outbox would be written, stored and read by the dispatcher for nobody (a predict
    call's 1000 class probabilities are ~36 KB)."""
    if event_type(task["task_type"]).startswith(FILE_META_PREFIX):
        return _file_meta_content(task)
    content: dict[str, Any] = {
        **_content_head(task),
        "TaskType": task["task_type"],
        "TaskId": task["id"],
        "Status": task["status"],
        "Code": task["code"],
        "Message": task["message"],
        "EventSourceId": "",
    }
    if results:
        content.update(task["result"] or {})
    return content


def _file_meta_content(task: Any) -> dict[str, Any]:
    """IMM's index message: no TaskId/Status; ``Success`` and per-file ``[Code] message``."""
    result = task["result"] or {}
    files = result.get("Files")
    if files is None:  # the whole job failed before per-file results existed
        error = f"[{task['code']}] {task['message']}"
        files = [
            {
                "URI": f.get("URI", ""),
                "CustomId": f.get("CustomId", ""),
                "CustomLabels": f.get("CustomLabels", {}),
                "Error": error,
            }
            for f in (task["request"] or {}).get("Files", [])
        ]
    return {
        **_content_head(task),
        # IMM's index message keeps the server's offset (seed 004: "…37.787209251+08:00").
        "StartTime": resource_time(task["start_time"]),
        "EndTime": resource_time(task["end_time"]),
        "Success": task["status"] == SUCCEEDED,
        "Message": result.get("Message", task["message"]),  # the indexer's summary
        "Files": files,
    }


def cancel(session: Session, project: Project, task_id_: str) -> Task:
    """Extension ``CancelTask``: Running → Cancelled (terminal); other states conflict."""
    task = get(session, project, task_id_)
    if not finalize(
        session,
        task.id,
        CANCELLED,
        code="TaskCancelled",
        message="The task was cancelled by CancelTask.",
        started_at=task.start_time,
    ):
        raise StatusConflict(f"Message: the task is already {task.status}.")
    session.refresh(task)  # the UPDATE ran in Core; reload the ORM copy
    return task


_FINISH = _finish_statement()
_PEEK = select(TASKS).where(TASKS.c.id == _bind(TASKS, "id"))
_CREATE = _create_statement()
