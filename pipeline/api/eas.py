"""PAI Model Hub (EAS) predict protocol: ``POST /api/predict/{service}``.

A predict call is a task like any other: it is written to the task table, queued, executed by
a worker pool and appears in ListTasks (project ``OPENIMM_EAS_PROJECT``, created on first use
for the caller); the HTTP call waits for it within ``OPENIMM_PREDICT_TIMEOUT_SECONDS``.

Services are registered in ``SERVICES``: each maps the Model Hub JSON input to a task request
and the finished task back to the Model Hub JSON output. Every answer carries Model Hub's
``request_id`` and ``success``; a failure (bad input, unknown service, failed task, timeout)
is ``{"request_id", "success": false, "error_code": <int>, "error_msg": …}`` as the seeds
document, plus openimm's earlier ``"result": "[Code] message"`` for existing callers.
``error_code`` is the HTTP status of the error (400 bad input, 401/403 authentication, 404
unknown service, 500 internal, 501 model not installed, 503 unavailable, 504 timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from pipeline import auth, eas_auth, jobs, projects
from pipeline.api import wire
from pipeline.api.services import Caller, Services
from pipeline.api.submission import Created, create_task, enqueue_and_wait
from pipeline.errors import ImmError, InvalidArgument, ResourceNotFound, SyncTimeout, TaskFailed
from pipeline.fastjson import FastJSONResponse
from pipeline.ids import utcnow
from pipeline.models import Task
from pipeline.params import bounded_int, loads

MAX_BODY_BYTES = 8 << 20
_DESC = "EAS predict calls"  # of the project each owner's predict calls are recorded in
_COMMON = {"user_data": "", "tags": {"source": "eas"}, "notification": {}, "client_token": None}


@dataclass(frozen=True)
class Service:
    task_type: str
    # Model Hub input → request (the caller: inputs are checked and outputs written as it)
    build: Callable[[dict[str, Any], Services, Caller], dict[str, Any]]
    output: Callable[[Task], dict[str, Any]]  # finished task → Model Hub output


SERVICES: dict[str, Service] = {}


def register(name: str, service: Service) -> None:
    """Add a service's protocol adapter; the service must be declared by its job kind."""
    declared = jobs.BY_SERVICE.get(name)
    if declared is None or declared.task_type != service.task_type:
        raise ValueError(f"EAS service {name!r} is not declared for {service.task_type} in jobs.")
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
    return {"result": "", "task_id": task.id}


# Benchmarks and drills (OPENIMM_DIAGNOSTICS=1 only), and the protocol's own tests.
register("diagnostic", Service("Diagnostic", _diagnostic_request, _diagnostic_output))

router = APIRouter()


def is_eas_path(path: str) -> bool:
    return path.startswith("/api/predict/")


def failure(request_id: str, code: str, message: str, status: int) -> dict[str, Any]:
    """Model Hub's error body (``error_code`` is the HTTP status of the error)."""
    return {
        "request_id": request_id,
        "success": False,
        "error_code": status,
        "error_msg": f"[{code}] {message}",
        "result": f"[{code}] {message}",
    }


def error_response(request: Request, exc: ImmError) -> FastJSONResponse:
    """An error raised while handling a predict call: Model Hub's shape (``success: false``,
    ``error_code``, ``error_msg``) with the IMM error fields beside it."""
    rid = getattr(request.state, "request_id", "")
    body = failure(rid, exc.code, exc.message, exc.http_status)
    imm = {"Code": exc.code, "Message": exc.message, "RequestId": rid}
    return FastJSONResponse({**body, **imm}, status_code=exc.http_status)


@router.post("/api/predict/{service}")
async def predict(service: str, request: Request) -> FastJSONResponse:
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
    result = await run_in_threadpool(run, services, caller, spec, payload)
    return FastJSONResponse(result)


def _window(services: Services) -> dict[str, Any]:
    return {
        "now": utcnow(),
        "max_skew": services.settings.signature_max_skew_seconds,
        "offsets": eas_auth.client_offsets(services.settings.eas_client_utc_offsets),
    }


async def _authenticate(
    services: Services, headers: dict[str, str], body: bytes, service: str
) -> str:
    """The caller, by its EAS signature. No replay cache here, unlike RPC and MNS: the EAS
    scheme has no nonce and a 1 s Date, so a byte-identical predict sent twice within a second
    (two threads classifying one image, the client's own retry) signs identically and is
    legitimate; a predict changes no existing resource, so a replay within the narrowed window
    (UTC ± skew) can only repeat a computation, which the caller is billed for anyway."""
    window = _window(services)
    return eas_auth.verify(headers, body, service, services.keys, **window)


def _create_project(svc: Services, owner: str) -> None:
    try:
        with svc.db.session() as s:
            projects.create_project(s, owner, svc.settings.eas_project, {"description": _DESC})
    except (ImmError, IntegrityError):
        pass  # a concurrent first call created it


def _create(svc: Services, caller: Caller, spec: Service, request: dict[str, Any]) -> Created:
    """The task row, in the caller's EAS project (made on the caller's first call: the
    common path reads the project once, inside the insert's transaction)."""
    name = svc.settings.eas_project
    try:
        return create_task(svc, caller, name, spec.task_type, request, _COMMON)
    except ResourceNotFound:  # EAS tasks name no topic: it is the project that is missing
        _create_project(svc, caller.owner)
        return create_task(svc, caller, name, spec.task_type, request, _COMMON)


def run(svc: Services, caller: Caller, spec: Service, payload: dict[str, Any]) -> dict[str, Any]:
    """Run one predict call as ``caller`` (the endpoint and the console's playground)."""
    request = spec.build(payload, svc, caller)
    try:
        created = _create(svc, caller, spec, request)
        timeout = svc.settings.predict_timeout_seconds
        task = enqueue_and_wait(svc, caller, created, timeout)
    except (TaskFailed, SyncTimeout) as exc:  # Model Hub reports failures in the body
        return failure(caller.request_id, exc.code, exc.message, exc.http_status)
    finally:
        _drop_staged(svc, caller, request)
    return {"request_id": caller.request_id, "success": True, **spec.output(task)}


def _drop_staged(svc: Services, caller: Caller, request: dict[str, Any]) -> None:
    """Delete the inline inputs a service staged in the caller's bucket for this call."""
    store = svc.store_for(caller.owner)
    for uri in request.get("Staged", ()):
        bucket, _, key = uri.removeprefix("oss://").partition("/")
        store.delete(bucket, key)
