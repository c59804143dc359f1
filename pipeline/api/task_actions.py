"""Task actions: GetTask, ListTasks, CancelTask and the Create*Task family."""

from __future__ import annotations

import logging
from typing import Any

from pipeline import projects, tasks, zipnames
from pipeline.api import views
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.api.submission import (
    COMMON_TASK_PARAMS,
    check_target,
    check_uri,
    common_params,
    submit,
    time_range,
)
from pipeline.errors import (
    InvalidArgument,
    InvalidParameter,
)
from pipeline.params import Params
from pipeline.storage import parse_oss_uri

log = logging.getLogger("openimm.api")
MAX_SOURCES = 100


@action("GetTask", "ProjectName TaskType TaskId RequestDefinition")
def get_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name = p.name("ProjectName")
    task_type, task_id = p.str("TaskType", required=True), p.str("TaskId", required=True)
    with_def = p.bool("RequestDefinition")
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        task = tasks.get(s, project, task_id, task_type)
        return views.get_task(task, caller.request_id, with_def)


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
        start_range=time_range(p, "StartTimeRange"),
        end_range=time_range(p, "EndTimeRange"),
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
    return submit(svc, caller, project_name, "FileCompression", request, common_params(p))


@action("CreateDiagnosticTask", COMMON_TASK_PARAMS + " Mode Seconds")
def create_diagnostic_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """openimm extension for benchmarks and failure drills; off unless OPENIMM_DIAGNOSTICS=1."""
    if not svc.settings.diagnostics:
        raise InvalidArgument("Diagnostic tasks are disabled; set OPENIMM_DIAGNOSTICS=1.")
    project_name = p.name("ProjectName")
    mode = p.choice("Mode", ("Noop", "Sleep", "Crash", "Fail"), default="Noop")
    seconds = p.int("Seconds", default=1, minimum=0, maximum=3600)
    request = {"Mode": mode, "Seconds": seconds}
    return submit(svc, caller, project_name, "Diagnostic", request, common_params(p))
