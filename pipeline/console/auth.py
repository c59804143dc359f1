"""Console sign-in: an AccessKey pair checked in constant time, then a signed session cookie.

The cookie is ``<owner b64>.<expiry>.<nonce>.<mac>``: the MAC is keyed by a key derived from
the owner's own AccessKeySecret (so every API process verifies it without shared state, and
rotating a key ends its sessions) or, in keyless dev mode, by a per-process random key. It is
HttpOnly and SameSite=Strict; every POST form also carries a CSRF token derived from the
session (and, on the sign-in form, a double-submit token), checked in constant time. Secrets
never appear in pages, URLs or logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from pipeline import auth as api_auth
from pipeline.console.pages import ConsoleError, SignInRequired, redirect, render, services

COOKIE = "openimm_console"
SIGNIN_COOKIE = "openimm_console_signin"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"
_DEV_KEY = secrets.token_bytes(32)  # keyless dev mode only: sessions end with the process
_NO_SECRET = secrets.token_urlsafe(24)  # compared against when the key id is unknown
# Failed sign-ins per client address (this process): guessing a secret stays slow.
MAX_FAILURES, FAILURE_WINDOW = 10, 300.0
_failures: dict[str, deque[float]] = defaultdict(deque)

router = APIRouter()


@dataclass(frozen=True)
class Session:
    owner: str
    nonce: str
    csrf: str
    dev: bool = False


def _key(request: Request, owner: str) -> bytes | None:
    svc = services(request)
    if api_auth.anonymous_owner(svc.keys, svc.settings.dev_mode) is not None:
        return _DEV_KEY if owner == api_auth.DEV_OWNER else None
    secret = svc.keys.get(owner)
    if secret is None:
        return None
    return hmac.new(secret.encode(), b"openimm-console-session", hashlib.sha256).digest()


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _session(key: bytes, owner: str, nonce: str, dev: bool) -> Session:
    return Session(owner=owner, nonce=nonce, csrf=_mac(key, "csrf:" + nonce)[:40], dev=dev)


def issue(request: Request, owner: str) -> str:
    """A fresh session cookie value for ``owner``."""
    key = _key(request, owner)
    if key is None:
        raise ConsoleError("This AccessKey cannot sign in.", 403)
    b64 = base64.urlsafe_b64encode(owner.encode()).decode().rstrip("=")
    body = f"{b64}.{int(time.time()) + SESSION_SECONDS}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(key, body)}"


def read(request: Request) -> Session | None:
    """The session the request's cookie proves, or None (absent, forged, expired, key gone)."""
    raw = request.cookies.get(COOKIE, "")
    parts = raw.split(".")
    if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < time.time():
        return None
    try:
        owner = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    key = _key(request, owner)
    body = ".".join(parts[:3])
    if key is None or not hmac.compare_digest(_mac(key, body), parts[3]):
        return None
    return _session(key, owner, parts[2], dev=key is _DEV_KEY)


def require(request: Request) -> Session:
    """The dependency of every page: the session, or a redirect to sign-in."""
    session = read(request)
    if session is None:
        raise SignInRequired()
    request.state.console_session = session
    return session


async def check_csrf(request: Request) -> Session:
    """The dependency of every POST: a session and the form's CSRF token matching it."""
    session = require(request)
    form = await request.form()
    given = str(form.get(CSRF_FIELD, ""))
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise ConsoleError("The form's CSRF token is missing or wrong: reload the page.", 403)
    return session


def dev_owner(request: Request) -> str | None:
    svc = services(request)
    return api_auth.anonymous_owner(svc.keys, svc.settings.dev_mode)


def _set_session(response: Response, value: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


@router.get("/signin")
async def signin_page(request: Request, next: str = "") -> Response:
    target = _safe_next(next)
    dev = dev_owner(request)
    if dev is not None:  # dev mode: signed in without a form
        response: Response = redirect(target)
        _set_session(response, issue(request, dev), request.url.scheme == "https")
        return response
    if read(request) is not None:
        return redirect(target)
    token = secrets.token_urlsafe(24)
    response = render(request, "signin.html", signin_token=token, next=target)
    response.set_cookie(
        SIGNIN_COOKIE, token, max_age=1800, path="/console", httponly=True, samesite="strict"
    )
    return response


@router.post("/signin")
async def signin(
    request: Request,
    access_key_id: Annotated[str, Form()] = "",
    access_key_secret: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    expected_token = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected_token or not hmac.compare_digest(csrf.encode(), expected_token.encode()):
        raise ConsoleError("The sign-in form expired: reload the page and sign in again.", 403)
    client = request.client.host if request.client else ""
    if _too_many_failures(client):
        raise ConsoleError("Too many failed sign-ins from here: wait a few minutes.", 429)
    keys = services(request).keys
    expected = keys.get(access_key_id, _NO_SECRET)
    matches = hmac.compare_digest(access_key_secret.encode(), expected.encode())
    if not (matches and access_key_id in keys):
        _failures[client].append(time.monotonic())
        page = render(
            request,
            "signin.html",
            status=401,
            signin_token=expected_token,
            next=_safe_next(next),
            error="That AccessKey pair is not valid.",
            key_id=access_key_id,
        )
        return page
    response: Response = redirect(_safe_next(next))
    _set_session(response, issue(request, access_key_id), request.url.scheme == "https")
    response.delete_cookie(SIGNIN_COOKIE, path="/console")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    await check_csrf(request)
    response: Response = redirect("/signin", notice="Signed out.")
    response.delete_cookie(COOKIE, path="/console")
    return response


def _too_many_failures(client: str) -> bool:
    recent = _failures[client]
    while recent and recent[0] < time.monotonic() - FAILURE_WINDOW:
        recent.popleft()
    return len(recent) >= MAX_FAILURES


def _safe_next(value: str) -> str:
    """A console path to go back to after sign-in (never another site)."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
