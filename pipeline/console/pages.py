"""What every console page shares: the template environment, rendering, calling an action as
the signed-in owner, and the console's own error (an HTML page, never the API's JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from pipeline.api.rpc import ACTIONS
from pipeline.api.services import Caller, Services
from pipeline.errors import ImmError
from pipeline.params import Params

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
PREFIX = "/console"
# Pages only load what openimm serves; no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

ENV = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
ENV.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)


class ConsoleError(Exception):
    """A console request that cannot be answered: shown as a page with this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page."""


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the session (owner, CSRF token) and flash messages."""
    context.setdefault("session", getattr(request.state, "console_session", None))
    context.setdefault("notice", request.query_params.get("notice", ""))
    context.setdefault("error", request.query_params.get("error", ""))
    context.setdefault("prefix", PREFIX)
    html = ENV.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(path: str, **query: str) -> RedirectResponse:
    """A 303 to a console path (after a POST), with an optional notice or error."""
    target = PREFIX + path
    shown = {k: v for k, v in query.items() if v}
    if shown:
        target += ("&" if "?" in target else "?") + urlencode(shown)
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def owner(request: Request) -> str:
    """The signed-in owner (set by ``auth.require``)."""
    session = getattr(request.state, "console_session", None)
    if session is None:
        raise SignInRequired()
    return str(session.owner)


async def call(request: Request, action: str, **params: Any) -> dict[str, Any]:
    """Run the registered IMM action ``action`` as the signed-in owner, exactly as the RPC
    endpoint would (same parameter checks, same handler). Structured values are JSON-encoded
    like the SDK sends them; None values are left out."""
    spec = ACTIONS[action]
    values = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items() if v is not None
    }
    p = Params(values)
    p.check_known(action, spec.params)
    caller = Caller(owner=owner(request), request_id=request.state.request_id)
    return await run_in_threadpool(spec.handler, services(request), caller, p)


async def try_call(request: Request, action: str, **params: Any) -> tuple[dict[str, Any], str]:
    """``call`` that returns ``({}, message)`` for an IMM error instead of raising."""
    try:
        return await call(request, action, **params), ""
    except ImmError as exc:
        return {}, f"{exc.code}: {exc.message}"


def error_page(request: Request, exc: Exception) -> Response:
    """The exception handler for ``ConsoleError`` and for IMM errors raised on console paths."""
    if isinstance(exc, ConsoleError):
        status, message = exc.status, exc.message
    elif isinstance(exc, ImmError):
        status, message = exc.http_status, f"{exc.code}: {exc.message}"
    else:  # pragma: no cover - only the two classes are registered
        raise exc
    return render(request, "error.html", status=status, message=message)
