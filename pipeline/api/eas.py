"""PAI Model Hub (EAS) predict protocol: ``POST /api/predict/{service}``.

A predict call is a task like any other: it is written to the task table, queued, executed by
a worker pool and appears in ListTasks (project ``OPENIMM_EAS_PROJECT``, created on first use
for the caller); the HTTP call waits for it within ``OPENIMM_PREDICT_TIMEOUT_SECONDS``.

Services are registered in ``SERVICES``: each maps the Model Hub JSON input to a task request
and the finished task back to the Model Hub JSON output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from pipeline import auth, eas_auth, projects
from pipeline.api import rpc, wire
from pipeline.api.services import Caller, Services
from pipeline.api.task_actions import SyncTimeout, TaskFailed, submit, wait_for_task
from pipeline.errors import ImmError, InvalidArgument, ResourceNotFound
from pipeline.ids import utcnow
from pipeline.models import Task
from pipeline.params import bounded_int, loads

MAX_BODY_BYTES = 8 << 20


@dataclass(frozen=True)
class Service:
    task_type: str
    # Model Hub input → request (the caller: inputs are checked and outputs written as it)
    build: Callable[[dict[str, Any], Services, Caller], dict[str, Any]]
    output: Callable[[Task], dict[str, Any]]  # finished task → Model Hub output


SERVICES: dict[str, Service] = {}


def register(name: str, service: Service) -> None:
    SERVICES[name] = service


def _diagnostic_request(body: dict[str, Any], svc: Services, _caller: Caller) -> dict[str, Any]:
    if not svc.settings.diagnostics:
        raise ResourceNotFound("service", "diagnostic")
    data = body.get("input") or {}
    if not isinstance(data, dict):
        raise InvalidArgument('Expected {"input": {"mode": …, "seconds": …}}.')
    mode = str(data.get("mode", "Noop"))
    if mode not in ("Noop", "Sleep", "Fail"):
        raise InvalidArgument("input.mode must be Noop, Sleep or Fail.")
    seconds = bounded_int(data.get("seconds", 1), 0, 3600)
    if seconds is None:
        raise InvalidArgument("input.seconds must be an integer from 0 to 3600.")
    return {"Mode": mode, "Seconds": seconds}


def _diagnostic_output(task: Task) -> dict[str, Any]:
    return {"result": "", "success": True, "task_id": task.id}


# Benchmarks and drills (OPENIMM_DIAGNOSTICS=1 only), and the protocol's own tests.
register("diagnostic", Service("Diagnostic", _diagnostic_request, _diagnostic_output))

router = APIRouter()


@router.post("/api/predict/{service}")
async def predict(service: str, request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    headers = wire.view(request).headers
    anonymous = auth.anonymous_owner(services.keys, services.settings.dev_mode)
    if anonymous is None:  # checks that need no body first: unsigned floods cost no memory
        eas_auth.precheck(headers, **_window(services))
    body = await request.body()  # at most MAX_BODY_BYTES (limits.BodyLimitMiddleware)
    owner = anonymous or await _authenticate(services, headers, body, service)
    spec = SERVICES.get(service)
    if spec is None:
        raise ResourceNotFound("service", service)
    try:
        payload = loads(body or b"{}")
    except ValueError as exc:
        raise InvalidArgument(f"The body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidArgument('The body must be a JSON object like {"input": {...}}.')
    caller = Caller(owner=owner, request_id=request.state.request_id)
    result = await run_in_threadpool(_run, services, caller, spec, payload)
    return JSONResponse(result)


def _window(services: Services) -> dict[str, Any]:
    return {
        "now": utcnow(),
        "max_skew": services.settings.signature_max_skew_seconds,
        "offsets": eas_auth.client_offsets(services.settings.eas_client_utc_offsets),
    }


async def _authenticate(
    services: Services, headers: dict[str, str], body: bytes, service: str
) -> str:
    window = _window(services)
    owner = eas_auth.verify(headers, body, service, services.keys, **window)
    ttl = eas_auth.window_seconds(window["offsets"], window["max_skew"])
    await rpc.first_use(services, eas_auth.replay_key(headers), ttl)
    return owner


def error_response(request: Request, exc: ImmError) -> JSONResponse:
    """Model Hub's error shape (``success: false``) with the IMM error fields beside it."""
    rid = getattr(request.state, "request_id", "")
    body = {"success": False, "result": f"[{exc.code}] {exc.message}", "Code": exc.code}
    return JSONResponse({**body, "Message": exc.message, "RequestId": rid}, exc.http_status)


def is_eas_path(path: str) -> bool:
    return path.startswith("/api/predict/")


def _ensure_project(svc: Services, owner: str) -> str:
    name = svc.settings.eas_project
    with svc.db.session() as s:
        try:
            projects.get_project(s, owner, name)
            return name
        except ResourceNotFound:
            pass
    try:
        with svc.db.session() as s:
            projects.create_project(s, owner, name, {"description": "EAS predict calls"})
    except (ImmError, IntegrityError):
        pass  # a concurrent first call created it
    return name


def _run(svc: Services, caller: Caller, spec: Service, payload: dict[str, Any]) -> dict[str, Any]:
    request = spec.build(payload, svc, caller)
    project = _ensure_project(svc, caller.owner)
    common = {"user_data": "", "tags": {"source": "eas"}, "notification": {}, "client_token": None}
    created = submit(svc, caller, project, spec.task_type, request, common)
    try:
        task = wait_for_task(svc, caller, created["TaskId"], svc.settings.predict_timeout_seconds)
    except (TaskFailed, SyncTimeout) as exc:  # Model Hub reports failures in the body
        return {"result": f"[{exc.code}] {exc.message}", "success": False}
    return spec.output(task)
