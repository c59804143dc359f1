"""Tasks: a live list with filters (progress pushed over server-sent events, the list itself
refreshed as a partial), and a task's page with its request, result, attempts and the
deliveries of its notification (with a replay button)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pipeline import jobs, projects
from pipeline import tasks as task_store
from pipeline.console import auth
from pipeline.console.pages import (
    ConsoleError,
    call,
    owner,
    redirect,
    render,
    services,
    try_call,
)
from pipeline.errors import ImmError

router = APIRouter()
PAGE = 50
SINCE = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "": None}
STREAM_SECONDS = 20.0  # short, so a server stop never waits long; EventSource reconnects
STREAM_TICK = 0.7
TASK_TYPES = tuple(k.task_type for k in jobs.KINDS)
# TaskId is "<prefix>-<uuid4>" (pipeline.ids.task_id); GetTask wants the type back.
_BY_PREFIX = {(k.task_id_prefix or k.task_type): k.task_type for k in jobs.KINDS}
UUID_CHARS = 36


def task_type_of(task_id: str) -> str:
    """The TaskType of a TaskId, from its prefix; ConsoleError (404) if it names none."""
    prefix, dash = task_id[: -UUID_CHARS - 1], task_id[-UUID_CHARS - 1 : -UUID_CHARS]
    found = _BY_PREFIX.get(prefix) if dash == "-" else None
    if found is None:
        raise ConsoleError(f"No task {task_id[:80]}.", 404)
    return found


async def get_task(request: Request, project: str, task_id: str) -> dict[str, Any]:
    """GetTask (with its request definition) for a task of the owner."""
    return await call(
        request,
        "GetTask",
        ProjectName=project,
        TaskId=task_id,
        TaskType=task_type_of(task_id),
        RequestDefinition="true",
    )


async def _projects(request: Request, only: str) -> list[str]:
    if only:
        return [only]
    listing = await call(request, "ListProjects", MaxResults="200")
    return [p["ProjectName"] for p in listing.get("Projects", [])]


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    values = {k: q.get(k, "").strip() for k in ("project", "type", "status", "tag", "since")}
    if values["status"] and values["status"] not in task_store.STATUSES:
        raise ConsoleError(f"Status must be one of {', '.join(task_store.STATUSES)}.")
    if values["type"] and values["type"] not in TASK_TYPES:
        raise ConsoleError(f"Unknown task type {values['type'][:64]}.")
    if values["since"] not in SINCE:
        raise ConsoleError("since must be 1h, 24h or 7d.")
    if values["tag"] and "=" not in values["tag"]:
        raise ConsoleError("A tag filter is key=value.")
    return values


def _list_params(f: dict[str, str], status: str = "") -> dict[str, Any]:
    params: dict[str, Any] = {"Sort": "StartTime", "Order": "desc", "MaxResults": str(PAGE)}
    if f["type"]:
        params["TaskTypes"] = [f["type"]]
    if status or f["status"]:
        params["Status"] = status or f["status"]
    if f["tag"]:
        params["TagSelector"] = f["tag"]
    window = SINCE[f["since"]]
    if window is not None:
        start = (datetime.now(UTC) - window).strftime("%Y-%m-%dT%H:%M:%SZ")
        params["StartTimeRange"] = {"Start": start}
    return params


async def list_tasks(request: Request, f: dict[str, str], status: str = "") -> list[dict[str, Any]]:
    """The newest tasks matching ``f`` over the owner's projects (each row has ProjectName)."""
    rows: list[dict[str, Any]] = []
    for name in await _projects(request, f["project"]):
        page = await call(request, "ListTasks", ProjectName=name, **_list_params(f, status))
        rows += [{**t, "ProjectName": name} for t in page.get("Tasks", [])]
    rows.sort(key=lambda t: t.get("StartTime", ""), reverse=True)
    return rows[:PAGE]


def _context(request: Request, f: dict[str, str]) -> dict[str, Any]:
    query = urlencode({k: v for k, v in f.items() if v})
    return {"filters": f, "query": query, "types": TASK_TYPES, "statuses": task_store.STATUSES}


@router.get("/tasks")
async def tasks_page(request: Request) -> Response:
    f = _filters(request)
    rows = await list_tasks(request, f)
    names = await _projects(request, "")
    return render(
        request, "tasks.html", tasks=rows, projects=names, nav="tasks", **_context(request, f)
    )


@router.get("/tasks/rows")
async def task_rows(request: Request) -> Response:
    """The list's rows alone (the page refreshes them in place)."""
    f = _filters(request)
    return render(request, "_task_rows.html", tasks=await list_tasks(request, f))


@router.get("/tasks/stream")
async def task_stream(request: Request) -> Response:
    """Server-sent events: ``{TaskId, Status, Progress}`` whenever a running task moves, and
    once more when it ends."""
    f = _filters(request)
    return StreamingResponse(
        _events(request, f),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _events(request: Request, f: dict[str, str]) -> AsyncIterator[str]:
    seen: dict[str, tuple[str, int, str]] = {}  # task id → (status, progress, project)
    deadline = asyncio.get_running_loop().time() + STREAM_SECONDS
    yield "retry: 1500\n\n"
    while asyncio.get_running_loop().time() < deadline and not await request.is_disconnected():
        try:
            running = await list_tasks(request, f, status="Running")
        except ImmError:
            running = []
        now = {t["TaskId"]: t for t in running}
        for task_id, (_, _, project) in list(seen.items()):
            if task_id not in now:  # ended since the last tick: send its final state
                ended, _problem = await try_call(
                    request,
                    "GetTask",
                    ProjectName=project,
                    TaskId=task_id,
                    TaskType=task_type_of(task_id),
                )
                if ended:
                    now[task_id] = {**ended, "ProjectName": project}
        for task_id, t in now.items():
            state = (t["Status"], int(t.get("Progress", 0)), t["ProjectName"])
            if seen.get(task_id) != state:
                yield f"data: {json.dumps(_event(t))}\n\n"
            seen[task_id] = state
        seen = {k: v for k, v in seen.items() if v[0] == "Running"}
        await asyncio.sleep(STREAM_TICK)


def _event(t: dict[str, Any]) -> dict[str, Any]:
    progress = 100 if t["Status"] == "Succeeded" else int(t.get("Progress", 0))
    return {"TaskId": t["TaskId"], "Status": t["Status"], "Progress": progress}


def _attempts(request: Request, project: str, task_id: str) -> tuple[int, str]:
    """How many times the task was started and by which worker (not in GetTask's answer)."""
    svc = services(request)
    with svc.db.session() as s:
        proj = projects.get_project(s, owner(request), project)
        task = task_store.get(s, proj, task_id)
        return task.attempts, task.worker


@router.get("/tasks/{project}/{task_id}")
async def task_page(request: Request, project: str, task_id: str) -> Response:
    task = await get_task(request, project, task_id)
    attempts, worker = await run_in_threadpool(_attempts, request, project, task_id)
    deliveries, problem = await try_call(
        request, "ListDeliveries", EventId=task.get("EventId", ""), MaxResults="50"
    )
    definition = task.pop("TaskRequestDefinition", "")
    info_keys = ("TaskId", "TaskType", "Status", "Code", "Message", "Progress", "StartTime")
    facts = {k: task.get(k, "") for k in (*info_keys, "EndTime", "EventId", "UserData", "Tags")}
    extra = {k: v for k, v in task.items() if k not in facts and k not in ("RequestId",)}
    return render(
        request,
        "task.html",
        project=project,
        task=task,
        facts=facts,
        request_def=json.loads(definition) if definition else {},
        result=extra,
        attempts=attempts,
        worker=worker,
        deliveries=deliveries.get("Deliveries", []),
        deliveries_problem=problem,
        nav="tasks",
    )


@router.post("/tasks/{project}/{task_id}/replay")
async def replay(
    request: Request,
    project: str,
    task_id: str,
    event_id: Annotated[str, Form()] = "",
    _session: auth.Session = Depends(auth.check_csrf),
) -> Response:
    here = f"/tasks/{project}/{task_id}"
    if not event_id:
        return redirect(here, error="This task has no notification to replay.")
    done, problem = await try_call(request, "ReplayDeliveries", EventId=event_id)
    if problem:
        return redirect(here, error=problem)
    return redirect(here, notice=f"{done.get('Replayed', 0)} deliveries queued again.")


@router.post("/tasks/{project}/{task_id}/cancel")
async def cancel(
    request: Request, project: str, task_id: str, _session: auth.Session = Depends(auth.check_csrf)
) -> Response:
    here = f"/tasks/{project}/{task_id}"
    _done, problem = await try_call(request, "CancelTask", ProjectName=project, TaskId=task_id)
    return redirect(here, error=problem) if problem else redirect(here, notice="Cancelled.")
