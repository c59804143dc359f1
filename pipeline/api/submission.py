"""Submitting work, for every front door: the common Create*Task parameters, the URI checks
(inputs readable and outputs writable by the caller, refused before anything is queued),
``submit`` (task row, then enqueue; removed again if the broker refuses) and
``wait_for_task`` / ``enqueue_and_wait`` (the synchronous calls: pushed, re-read as the
fallback)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pipeline import jobs, netpolicy, projects, queue, tasks
from pipeline.api.services import Caller, Services
from pipeline.errors import (
    InvalidParameter,
    NotCreated,
    QueueUnavailable,
    ResourceNotFound,
    StatusConflict,
    SyncTimeout,
    TaskFailed,
)
from pipeline.ids import parse_time
from pipeline.notify import topics as notify_topics
from pipeline.notify import wake
from pipeline.outages import Backoff, OutageLog, dependency_of, retrying
from pipeline.params import Params
from pipeline.storage import parse_oss_prefix, parse_oss_uri, resolve_file_uri

log = logging.getLogger("openimm.api")
# The reads of waiting calls ride out outages (one log line per change, like the workers').
_WAIT_OUTAGES = OutageLog(log)
USER_DATA_MAX_BYTES = 2048
TAGS_MAX_BYTES = 8192
COMMON_TASK_PARAMS = "ProjectName Notification UserData Tags CredentialConfig"


def notification(p: Params) -> dict[str, Any]:
    value = p.json("Notification", dict) or {}
    unknown = set(value) - {"MNS", "RocketMQ", "ExtendedMessageURI"}
    if unknown:
        raise InvalidParameter("Notification", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    if value.get("RocketMQ"):
        raise InvalidParameter("Notification", "RocketMQ is not supported; use MNS.")
    mns = value.get("MNS")
    if mns is not None and not (
        isinstance(mns, dict) and isinstance(mns.get("TopicName"), str) and mns["TopicName"]
    ):
        raise InvalidParameter("Notification", "MNS needs a non-empty TopicName.")
    return value


def common_params(p: Params) -> dict[str, Any]:
    tags = p.json("Tags", dict) or {}
    if len(str(tags).encode()) > TAGS_MAX_BYTES:
        raise InvalidParameter("Tags", f"Tags must be at most {TAGS_MAX_BYTES} bytes.")
    p.json("CredentialConfig", dict)  # accepted for SDK compatibility; local stores need none
    return {
        "user_data": p.str("UserData", max_bytes=USER_DATA_MAX_BYTES),
        "tags": tags,
        "notification": notification(p),
        "client_token": p.str("ClientToken") or None,
    }


@dataclass(frozen=True)
class Created:
    """A task row written by :func:`create_task` (``created`` False: an idempotent retry
    found the first task, which is already queued)."""

    task_id: str
    event_id: str
    task_type: str
    queue: str
    created: bool

    def ids(self) -> dict[str, Any]:
        return {"TaskId": self.task_id, "EventId": self.event_id}


def create_task(
    svc: Services,
    caller: Caller,
    project_name: str,
    task_type: str,
    request: dict[str, Any],
    common: dict[str, Any],
    dataset_name: str = "",
) -> Created:
    """Write the Running task row (one transaction); :func:`enqueue` sends it. A database
    outage here is :class:`NotCreated`: the caller learns that nothing exists to wait for
    (unlike a call already waiting on its row, which rides the outage out)."""
    jobs.kind(task_type)  # an undeclared kind is a programming error, never queued
    try:
        return _write_task(svc, caller, project_name, task_type, request, common, dataset_name)
    except Exception as exc:
        dependency = dependency_of(exc)
        if dependency is None:
            raise
        raise NotCreated(dependency) from exc


def _write_task(
    svc: Services,
    caller: Caller,
    project_name: str,
    task_type: str,
    request: dict[str, Any],
    common: dict[str, Any],
    dataset_name: str,
) -> Created:
    spec = tasks.NewTask(
        task_type=task_type,
        queue=queue.queue_for(task_type, svc.settings),
        request=request,
        dataset_name=dataset_name,
        **common,
    )
    topic = (spec.notification.get("MNS") or {}).get("TopicName")
    if not topic and not spec.client_token:  # nothing else to check: one statement
        with svc.db.statement() as s:
            ids = tasks.create_unkeyed(
                s, caller.owner, project_name, spec, request_id=caller.request_id
            )
        if ids is None:
            raise ResourceNotFound("project", project_name)
        return Created(*ids, task_type, spec.queue, True)
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        if topic:
            notify_topics.get_topic(s, caller.owner, topic)  # unknown topic: refuse at create
        task, created = tasks.create(s, project, spec, request_id=caller.request_id)
        return Created(task.id, task.event_id, task_type, spec.queue, created)


def enqueue(svc: Services, created: Created) -> None:
    """Send a new task to its queue. If the broker refuses, the row is removed again so the
    client sees an error and nothing half-created remains."""
    if not created.created:
        return
    try:
        queue.enqueue(svc.celery, created.task_id, created.task_type, created.queue, svc.settings)
    except Exception as exc:
        if dependency_of(exc) is None:  # an outage is logged once, by the error handler
            log.exception("enqueue of %s failed", created.task_id)
        with svc.db.session() as s:
            s.delete(s.get(tasks.Task, created.task_id))
        raise QueueUnavailable() from exc


def submit(
    svc: Services,
    caller: Caller,
    project_name: str,
    task_type: str,
    request: dict[str, Any],
    common: dict[str, Any],
    dataset_name: str = "",
) -> dict[str, Any]:
    """Write the Running task row, then enqueue it (see :func:`enqueue`)."""
    created = create_task(svc, caller, project_name, task_type, request, common, dataset_name)
    enqueue(svc, created)
    return created.ids()


def wait_for_task(svc: Services, caller: Caller, task_id: str, timeout: float) -> tasks.Task:
    """Block (in the request's worker thread) until a task ends; for IMM's synchronous calls
    that openimm runs on the queue. A task still running at the timeout is cancelled.

    Woken by push (``pipeline.notify.wake``, key ``task:<id>``) when the task's terminal
    event is written; the row stays the truth: the waiter is registered before each read, and
    re-reads every ``OPENIMM_SYNC_WAIT_FALLBACK_SECONDS`` when no wake-up reaches it."""
    with wake.HUB.waiting_thread(wake.task_key(task_id)) as waiter:
        return _wait(svc, caller, task_id, timeout, waiter, read_first=True)


def enqueue_and_wait(svc: Services, caller: Caller, created: Created, timeout: float) -> tasks.Task:
    """:func:`enqueue` then :func:`wait_for_task`, with the waiter registered before the
    task is queued: nothing can end it before that, so the first read waits for the wake-up
    (or the fallback interval) instead of finding it Running."""
    with wake.HUB.waiting_thread(wake.task_key(created.task_id)) as waiter:
        enqueue(svc, created)
        return _wait(svc, caller, created.task_id, timeout, waiter, read_first=not created.created)


def _wait(
    svc: Services,
    caller: Caller,
    task_id: str,
    timeout: float,
    waiter: wake.ThreadWaiter,
    *,
    read_first: bool,
) -> tasks.Task:
    deadline = time.monotonic() + timeout
    fallback = svc.settings.sync_wait_fallback_seconds
    if not read_first:
        waiter.wait(min(fallback, timeout))
    while True:
        task = _read_riding_outages(svc, task_id, deadline)
        assert task is not None
        if task.status != tasks.RUNNING:
            break
        left = deadline - time.monotonic()
        if left < 0:
            if not _cancel(svc, caller, task):
                continue  # it ended just now: the re-read returns it
            raise SyncTimeout(f"The operation did not finish within {timeout:.0f} s.")
        waiter.wait(min(fallback, left + 0.001))
    if task.status != tasks.SUCCEEDED:
        raise TaskFailed(task.message or "The operation failed.", code=task.code or None)
    return task


def _read_riding_outages(svc: Services, task_id: str, deadline: float) -> tasks.Task | None:
    """The waited-on task as it is now. Its row exists and its job is on the queue, so a
    database outage (a restart, a failover) only delays the answer: the read is retried
    until the database is back or the call's own deadline passes (then 503, as for a call
    that arrives during the outage). A 3-second outage used to end every waiting call with
    a 503 while its task went on to succeed."""

    def read() -> tasks.Task | None:
        with svc.db.statement() as s:  # one SELECT: no transaction around it
            return tasks.peek(s, task_id)

    left = max(0.0, deadline - time.monotonic())
    return retrying(read, _WAIT_OUTAGES, give_up_after=left, backoff=Backoff(0.05, cap=1.0))


def _cancel(svc: Services, caller: Caller, task: tasks.Task) -> bool:
    """Cancel a synchronous call's task at its timeout; False if it ended meanwhile."""
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, task.project_name)
        try:
            tasks.cancel(s, project, task.id)
        except StatusConflict:
            return False
    return True


def time_range(p: Params, name: str) -> tuple[Any, Any]:
    value = p.json(name, dict) or {}
    if not all(isinstance(value.get(k) or "", str) for k in ("Start", "End")):
        raise InvalidParameter(name, "Start and End must be RFC3339 time strings.")
    try:
        return tuple(
            parse_time(value[k]) if value.get(k) else None  # type: ignore[return-value]
            for k in ("Start", "End")
        )
    except (TypeError, ValueError):
        raise InvalidParameter(name, "Start and End must be RFC3339 times.") from None


def check_uri(svc: Services, caller: Caller, uri: str, param: str, *, prefix: bool = False) -> None:
    """Refuse input URIs the workers could never read, before anything is queued: malformed,
    outside the roots, private, or in a bucket the caller may not read.
    ``prefix``: an ``oss://`` URI may name a folder (``oss://bucket/dir/``)."""
    if uri.startswith("oss://"):
        bucket, _ = parse_oss_prefix(uri) if prefix else parse_oss_uri(uri)
        svc.store_for(caller.owner).require_read(bucket)
    elif uri.startswith("file://"):
        resolve_file_uri(uri, svc.settings.allowed_file_roots)
    elif uri.startswith(("http://", "https://")):
        netpolicy.check_url(uri, svc.settings.http_allow_private)  # as the worker will fetch
    else:
        raise InvalidParameter(param, f"Unsupported URI {uri!r}: use oss://bucket/key.")


def check_target(svc: Services, caller: Caller, uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an output ``oss://`` URI, refused now unless the caller may write
    the bucket (it is claimed when the worker writes, not here: a refused create claims
    nothing)."""
    bucket, key = parse_oss_uri(uri)
    svc.store_for(caller.owner).check_write(bucket)
    return bucket, key
