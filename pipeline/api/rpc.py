"""IMM RPC protocol: ``POST /`` (or GET), action from ``x-acs-action`` or ``Action``,
parameters in the query string or a form body, ACS3-HMAC-SHA256 authentication.

The router and the verifier read every value from one ``wire.RequestView``; a parameter given
twice (query and body, or twice in either) is refused, never resolved one way or the other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline import auth
from pipeline.api import wire
from pipeline.api.services import Caller, Services
from pipeline.errors import AmbiguousRequest, InvalidAction, MissingParameter, SignatureNonceUsed
from pipeline.ids import utcnow
from pipeline.params import Params

Handler = Callable[[Services, Caller, Params], dict[str, Any]]
MAX_BODY_BYTES = 4 << 20
FORM_TYPE = "application/x-www-form-urlencoded"


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
    services: Services = request.app.state.services
    head = wire.view(request)
    precheck(services, head)  # before the body is read: unsigned floods cost no memory
    body = await request.body()  # at most MAX_BODY_BYTES (limits.BodyLimitMiddleware)
    values = dict(head.query)
    if head.headers.get("content-type", "").startswith(FORM_TYPE):
        form = wire.unique_pairs(body.decode("utf-8", "replace"), "parameter")
        both = sorted(values.keys() & form.keys())
        if both:
            raise AmbiguousRequest(f"The parameter {both[0]} is in both the query and the body.")
        values.update(form)
    owner = await authenticate(services, head, body)
    caller = Caller(owner=owner, request_id=request.state.request_id)
    name = _action_name(head, values)
    spec = ACTIONS.get(name)
    if spec is None:
        raise InvalidAction(f"The specified action {name} is not supported.")
    params = Params(values)
    params.check_known(name, spec.params)
    result = await run_in_threadpool(spec.handler, services, caller, params)
    return JSONResponse({"RequestId": caller.request_id, **result})


def _action_name(head: wire.RequestView, values: dict[str, str]) -> str:
    header, param = head.headers.get("x-acs-action", ""), values.get("Action", "")
    if header and param and header != param:
        raise AmbiguousRequest("x-acs-action and the Action parameter disagree.")
    if not (header or param):
        raise MissingParameter("Action")
    return header or param


def precheck(services: Services, head: wire.RequestView) -> None:
    """Authentication checks that need no body (signature header, known key, fresh date)."""
    if auth.anonymous_owner(services.keys, services.settings.dev_mode) is None:
        auth.precheck(
            head.headers,
            services.keys,
            now=utcnow(),
            max_skew=services.settings.signature_max_skew_seconds,
        )


async def authenticate(
    services: Services,
    head: wire.RequestView,
    body: bytes,
    *,
    allow_unsigned_payload: bool = False,
    streamed: bool = False,
) -> str:
    """The caller's owner id (AccessKeyId), or raise an ``AuthError``. A signature is
    accepted once: a replay within its validity window is refused. ``streamed``: the body is
    read after this check, and the caller hashes it against x-acs-content-sha256."""
    anonymous = auth.anonymous_owner(services.keys, services.settings.dev_mode)
    if anonymous is not None:
        return anonymous
    signed = auth.SignedRequest(
        method=head.method,
        path=head.path,
        query=head.query,
        headers=head.headers,
        body=body,
        streamed=streamed,
        repeated=head.repeated,
    )
    skew = services.settings.signature_max_skew_seconds
    owner = auth.verify(
        signed,
        services.keys,
        now=utcnow(),
        max_skew=skew,
        allow_unsigned_payload=allow_unsigned_payload,
    )
    # A date is accepted from skew before to skew after it: the window is 2 * skew long.
    await first_use(services, auth.replay_key(head.headers), 2 * skew + 1)
    return owner


async def first_use(services: Services, key: str, ttl: float) -> None:
    """Record a verified signature in the replay cache; raise if it was already used."""
    if not await run_in_threadpool(services.replay.first_use, key, ttl):
        raise SignatureNonceUsed()
