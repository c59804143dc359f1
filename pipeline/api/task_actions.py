"""Task actions: GetTask, ListTasks, CancelTask and the Create*Task family."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline import jobs, netpolicy, projects, queue, tasks, zipnames
from pipeline.api import views
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.errors import (
    InvalidArgument,
    InvalidParameter,
    QueueUnavailable,
    StatusConflict,
    SyncTimeout,
    TaskFailed,
)
from pipeline.ids import parse_time
from pipeline.notify import topics as notify_topics
from pipeline.notify import wake
from pipeline.outages import dependency_of
from pipeline.params import Params
from pipeline.storage import parse_oss_prefix, parse_oss_uri, resolve_file_uri

log = logging.getLogger("openimm.api")
USER_DATA_MAX_BYTES = 2048
TAGS_MAX_BYTES = 8192
MAX_SOURCES = 100
COMMON_TASK_PARAMS = "ProjectName Notification UserData Tags CredentialConfig"


def _notification(p: Params) -> dict[str, Any]:
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


def _common(p: Params) -> dict[str, Any]:
    tags = p.json("Tags", dict) or {}
    if len(str(tags).encode()) > TAGS_MAX_BYTES:
        raise InvalidParameter("Tags", f"Tags must be at most {TAGS_MAX_BYTES} bytes.")
    p.json("CredentialConfig", dict)  # accepted for SDK compatibility; local stores need none
    return {
        "user_data": p.str("UserData", max_bytes=USER_DATA_MAX_BYTES),
        "tags": tags,
        "notification": _notification(p),
        "client_token": p.str("ClientToken") or None,
    }


def submit(
    svc: Services,
    caller: Caller,
    project_name: str,
    task_type: str,
    request: dict[str, Any],
    common: dict[str, Any],
    dataset_name: str = "",
) -> dict[str, Any]:
    """Write the Running task row, then enqueue it. If the broker refuses, the row is removed
    again so the client sees an error and nothing half-created remains."""
    jobs.kind(task_type)  # an undeclared kind is a programming error, never queued
    spec = tasks.NewTask(
        task_type=task_type,
        queue=queue.queue_for(task_type, svc.settings),
        request=request,
        dataset_name=dataset_name,
        **common,
    )
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        topic = (spec.notification.get("MNS") or {}).get("TopicName")
        if topic:
            notify_topics.get_topic(s, caller.owner, topic)  # unknown topic: refuse at create
        task, created = tasks.create(s, project, spec, request_id=caller.request_id)
        task_id, event_id = task.id, task.event_id
    if created:
        try:
            queue.enqueue(svc.celery, task_id, task_type, spec.queue, svc.settings)
        except Exception as exc:
            if dependency_of(exc) is None:  # an outage is logged once, by the error handler
                log.exception("enqueue of %s failed", task_id)
            with svc.db.session() as s:
                s.delete(s.get(tasks.Task, task_id))
            raise QueueUnavailable() from exc
    return {"TaskId": task_id, "EventId": event_id}


def wait_for_task(svc: Services, caller: Caller, task_id: str, timeout: float) -> tasks.Task:
    """Block (in the request's worker thread) until a task ends; for IMM's synchronous calls
    that openimm runs on the queue. A task still running at the timeout is cancelled.

    Woken by push (``pipeline.notify.wake``, key ``task:<id>``) when the task's terminal
    event is written; the row stays the truth: the waiter is registered before each read, and
    re-reads every ``OPENIMM_SYNC_WAIT_FALLBACK_SECONDS`` when no wake-up reaches it."""
    deadline = time.monotonic() + timeout
    with wake.HUB.waiting_thread(wake.task_key(task_id)) as waiter:
        while True:
            with svc.db.session() as s:
                task = s.get(tasks.Task, task_id)
                assert task is not None
                if task.status != tasks.RUNNING:
                    break
                left = deadline - time.monotonic()
                if left < 0:
                    project = projects.get_project(s, caller.owner, task.project_name)
                    try:
                        tasks.cancel(s, project, task_id)
                    except StatusConflict:  # it ended just now: the re-read returns it
                        continue
            if left < 0:  # raised after the commit: raising inside would roll the cancel back
                raise SyncTimeout(f"The operation did not finish within {timeout:.0f} s.")
            waiter.wait(min(svc.settings.sync_wait_fallback_seconds, left + 0.001))
    if task.status != tasks.SUCCEEDED:
        raise TaskFailed(task.message or "The operation failed.", code=task.code or None)
    return task


@action("GetTask", "ProjectName TaskType TaskId RequestDefinition")
def get_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name = p.name("ProjectName")
    task_type, task_id = p.str("TaskType", required=True), p.str("TaskId", required=True)
    with_def = p.bool("RequestDefinition")
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        task = tasks.get(s, project, task_id, task_type)
        return views.get_task(task, caller.request_id, with_def)


def _time_range(p: Params, name: str) -> tuple[Any, Any]:
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


def _task_filter(p: Params) -> tasks.TaskFilter:
    types = p.json("TaskTypes", list) or []
    if not all(isinstance(t, str) for t in types):
        raise InvalidParameter("TaskTypes", "Expected a JSON array of strings.")
    selector = p.str("TagSelector")
    if selector and "=" not in selector:
        raise InvalidParameter("TagSelector", "Expected key=value.")
    tag = tuple(selector.split("=", 1)) if selector else None
    return tasks.TaskFilter(
        task_types=types,
        status=p.choice("Status", tasks.STATUSES),
        start_range=_time_range(p, "StartTimeRange"),
        end_range=_time_range(p, "EndTimeRange"),
        tag=tag,  # type: ignore[arg-type]
    )


@action(
    "ListTasks",
    "ProjectName TaskTypes Status StartTimeRange EndTimeRange TagSelector "
    "NextToken MaxResults Order Sort RequestDefinition",
)
def list_tasks(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name = p.name("ProjectName")
    filt = _task_filter(p)
    max_results = p.int("MaxResults", default=100, minimum=0, maximum=100) or 100
    order = p.str("Order", default="asc").lower()
    if order not in ("asc", "desc"):
        raise InvalidParameter("Order", "It must be asc or desc.")
    sort = p.choice("Sort", tuple(tasks.SORT_COLUMNS), default="TaskId")
    with_def = p.bool("RequestDefinition")
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        rows, token = tasks.list_tasks(
            s,
            project,
            filt,
            sort=sort,
            order=order,
            max_results=max_results,
            next_token=p.str("NextToken"),
        )
        return {
            "ProjectName": project.name,
            "NextToken": token,
            "MaxResults": str(max_results),
            "Tasks": [views.task_info(t, with_def) for t in rows],
        }


@action("CancelTask", "ProjectName TaskId TaskType")
def cancel_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """openimm extension: Running → Cancelled.

    A queued message is revoked (workers drop it on receipt; a redelivery finds the task
    terminal anyway). A running job stops cooperatively: its next progress report sees the task
    is no longer Running and unwinds, cleaning its work directory. We do not use
    ``revoke(terminate=True)``: killing a pool process from outside confuses billiard's
    bookkeeping so a later crash of that process would go unnoticed (seen with Celery 5.7).
    """
    project_name, task_id = p.name("ProjectName"), p.str("TaskId", required=True)
    task_type = p.str("TaskType")
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        tasks.get(s, project, task_id, task_type)
        task = tasks.cancel(s, project, task_id)
        result = views.get_task(task, caller.request_id, False)
    svc.celery.control.revoke(task_id)
    return result


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


def _compression_sources(p: Params, svc: Services, caller: Caller) -> list[dict[str, Any]]:
    sources = p.json("Sources", list) or []
    if len(sources) > MAX_SOURCES:
        raise InvalidParameter("Sources", f"At most {MAX_SOURCES} rules; use SourceManifestURI.")
    for src in sources:
        if not isinstance(src, dict) or not isinstance(src.get("URI"), str):
            raise InvalidParameter("Sources", "Every source needs a URI string.")
        unknown = set(src) - {"URI", "Alias", "Mode"}
        if unknown:
            raise InvalidParameter("Sources", f"Unknown field(s) {', '.join(sorted(unknown))}.")
        if src.get("Mode", "prefix") not in ("prefix", "fullname"):
            raise InvalidParameter("Sources", "Mode must be prefix or fullname.")
        alias = str(src.get("Alias") or "")
        if alias and not alias.startswith("/"):
            raise InvalidParameter("Sources", "Alias must start with '/'.")
        if alias:
            try:
                zipnames.member_name(alias, "Alias")
            except InvalidArgument as exc:
                raise InvalidParameter("Sources", exc.message) from None
        check_uri(svc, caller, src["URI"], "Sources", prefix=True)
    return sources


@action(
    "CreateFileCompressionTask",
    COMMON_TASK_PARAMS + " Sources SourceManifestURI TargetURI CompressedFormat",
)
def create_file_compression_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name = p.name("ProjectName")
    target = p.str("TargetURI", required=True)
    check_target(svc, caller, target)
    if p.str("CompressedFormat", default="zip") != "zip":
        raise InvalidParameter("CompressedFormat", "Only zip is supported.")
    sources = _compression_sources(p, svc, caller)
    manifest = p.str("SourceManifestURI")
    if bool(sources) == bool(manifest):
        raise InvalidArgument("Specify exactly one of Sources and SourceManifestURI.")
    if manifest:
        parse_oss_uri(manifest)  # an object, not a folder or another scheme
        check_uri(svc, caller, manifest, "SourceManifestURI")
    request = {
        "Sources": sources,
        "SourceManifestURI": manifest,
        "TargetURI": target,
        "CompressedFormat": "zip",
    }
    return submit(svc, caller, project_name, "FileCompression", request, _common(p))


@action("CreateDiagnosticTask", COMMON_TASK_PARAMS + " Mode Seconds")
def create_diagnostic_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """openimm extension for benchmarks and failure drills; off unless OPENIMM_DIAGNOSTICS=1."""
    if not svc.settings.diagnostics:
        raise InvalidArgument("Diagnostic tasks are disabled; set OPENIMM_DIAGNOSTICS=1.")
    project_name = p.name("ProjectName")
    mode = p.choice("Mode", ("Noop", "Sleep", "Crash", "Fail"), default="Noop")
    seconds = p.int("Seconds", default=1, minimum=0, maximum=3600)
    request = {"Mode": mode, "Seconds": seconds}
    return submit(svc, caller, project_name, "Diagnostic", request, _common(p))
