"""IMM RPC protocol: ``POST /`` (or GET), action from ``x-acs-action`` or ``Action``,
parameters in the query string or a form body, ACS3-HMAC-SHA256 authentication."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline import auth
from pipeline.api.services import Caller, Services
from pipeline.errors import InvalidAction, InvalidArgument, MissingParameter
from pipeline.ids import utcnow
from pipeline.params import Params

Handler = Callable[[Services, Caller, Params], dict[str, Any]]
MAX_BODY_BYTES = 4 << 20


@dataclass(frozen=True)
class Action:
    handler: Handler
    params: frozenset[str]


ACTIONS: dict[str, Action] = {}


def action(name: str, params: str) -> Callable[[Handler], Handler]:
    """Register an RPC action with the parameter names it accepts (space separated)."""

    def register(handler: Handler) -> Handler:
        ACTIONS[name] = Action(handler, frozenset(params.split()))
        return handler

    return register


router = APIRouter()


@router.api_route("/", methods=["GET", "POST"])
async def rpc(request: Request) -> JSONResponse:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidArgument("The request body is too large.")
    query = dict(parse_qsl(request.url.query, keep_blank_values=True))
    values = dict(query)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        values.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    services: Services = request.app.state.services
    caller = Caller(
        owner=authenticate(services, request, query, body), request_id=request.state.request_id
    )
    name = request.headers.get("x-acs-action") or values.get("Action", "")
    if not name:
        raise MissingParameter("Action")
    spec = ACTIONS.get(name)
    if spec is None:
        raise InvalidAction(f"The specified action {name} is not supported.")
    params = Params(values)
    params.check_known(name, spec.params)
    result = await run_in_threadpool(spec.handler, services, caller, params)
    return JSONResponse({"RequestId": caller.request_id, **result})


def authenticate(
    services: Services,
    request: Request,
    query: dict[str, str],
    body: bytes,
    *,
    allow_unsigned_payload: bool = False,
    streamed: bool = False,
) -> str:
    """The caller's owner id (AccessKeyId), or raise an ``AuthError``. ``streamed``: the body
    is read after this check, which the caller hashes against x-acs-content-sha256."""
    if not services.keys:
        return auth.DEV_OWNER  # explicit OPENIMM_DEV_MODE without keys
    signed = auth.SignedRequest(
        method=request.method,
        path=request.url.path,
        query=query,
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
        streamed=streamed,
    )
    return auth.verify(
        signed,
        services.keys,
        now=utcnow(),
        max_skew=services.settings.signature_max_skew_seconds,
        allow_unsigned_payload=allow_unsigned_payload,
    )
