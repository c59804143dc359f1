"""The FastAPI application: lifespan wiring, the error handlers, ops endpoints.

Errors never escape the app: an ``ImmError`` becomes its protocol's error shape, an
infrastructure error (``pipeline.outages``) a 503 ``ServiceUnavailable`` with ``Retry-After``,
anything else a 500 — all answered inside the app, so uvicorn keeps the keep-alive connection
(an exception re-raised past the app makes it close the connection on the client).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import accounts, credentials, migrate, queue
from pipeline.api import (  # noqa: F401 (importing registers the actions)
    eas,
    figure_actions,
    file_actions,
    image_actions,
    media_actions,
    mns,
    notify_actions,
    objects,
    resource_actions,
    rpc,
    task_actions,
)
from pipeline.api.limits import BodyLimitMiddleware
from pipeline.api.services import Services
from pipeline.buckets import BucketPolicy
from pipeline.console import app as console
from pipeline.console.pages import error_page as console_error_page
from pipeline.db import Database
from pipeline.errors import AuthError, ImmError, ServiceUnavailable
from pipeline.ids import request_id
from pipeline.metrics import OpenimmCollector
from pipeline.notify import wake
from pipeline.notify.store import open_message_store
from pipeline.outages import OutageLog, dependency_of
from pipeline.replay import open_replay_cache
from pipeline.settings import Settings
from pipeline.storage import open_store

log = logging.getLogger("openimm.api")


def build_services(settings: Settings) -> Services:
    db = Database.from_settings(settings)
    store = open_store(settings)
    return Services(
        messages=open_message_store(settings, db),
        replay=open_replay_cache(settings, db),
        settings=settings,
        db=db,
        celery=queue.make_celery(settings),
        raw_store=store,
        buckets=BucketPolicy(db, store, settings),
        keys=credentials.load_keys(settings),
        accounts=accounts.load(settings),  # after load_keys: it may create the keys file
    )


def create_app(settings: Settings, *, run_migrations: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        if run_migrations:
            await run_in_threadpool(migrate.upgrade, settings.db_url)
        app.state.services = services
        registry = CollectorRegistry()
        registry.register(OpenimmCollector(settings, services.db, services.celery))
        app.state.registry = registry
        # Synchronous calls hear their task's end from the outbox trigger (PostgreSQL); on
        # SQLite, `openimm serve`'s dispatcher thread wakes them (pipeline.notify.dispatcher).
        listen = settings.sync_wait_push and not services.db.is_sqlite
        tasks_heard = wake.task_listener(services.db.url) if listen else None
        app.state.task_listener = tasks_heard
        yield
        if tasks_heard is not None:
            tasks_heard.close()
        services.messages.close()
        services.db.dispose()

    docs = settings.api_docs or settings.dev_mode  # the API's shape is not advertised
    app = FastAPI(
        title="openimm",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        redoc_url=None,
    )
    app.state.outages = OutageLog(log)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(ImmError, _imm_error)  # type: ignore[arg-type]
    app.include_router(rpc.router)
    app.include_router(objects.router)
    app.include_router(mns.router)
    app.include_router(eas.router)
    app.add_api_route("/healthz", _healthz, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    console.mount(app)
    return app


def body_limit(path: str) -> int | None:
    """Each protocol's body limit; object uploads stream to disk under their own limit."""
    if path.startswith("/oss/"):
        return None
    if console.is_console_path(path):
        return console.body_limit(path)
    if mns.is_mns_path(path):
        return mns.MAX_XML_BYTES
    if eas.is_eas_path(path):
        return eas.MAX_BODY_BYTES
    return rpc.MAX_BODY_BYTES


class RequestIdMiddleware:
    """Give every request an IMM RequestId (``request.state.request_id``, echoed in the
    ``x-acs-request-id`` header). Plain ASGI: BaseHTTPMiddleware costs a task per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-acs-request-id", rid.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


def error_body(request: Request, code: str, message: str) -> dict[str, str]:
    rid = getattr(request.state, "request_id", "") or request_id()
    return {
        "RequestId": rid,
        "HostId": request.url.hostname or "",
        "Code": code,
        "Message": message,
        "Recommend": f"https://github.com/openimm/openimm#errors?code={code}",
    }


async def _imm_error(request: Request, exc: ImmError) -> Response:
    response: Response
    if console.is_console_path(request.url.path):
        response = console_error_page(request, exc)
    elif mns.is_mns_path(request.url.path):
        response = mns.error_response(request, exc)
    elif eas.is_eas_path(request.url.path):
        response = eas.error_response(request, exc)
    else:
        response = JSONResponse(
            error_body(request, exc.code, exc.message), status_code=exc.http_status
        )
    if isinstance(exc, ServiceUnavailable):
        outages: OutageLog = request.app.state.outages
        outages.down(dependency_of(exc) or "service", exc.__cause__ or exc)
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


class CatchAllMiddleware:
    """Answer every exception that no handler took, inside the app (see module doc):
    infrastructure errors as 503, the rest as 500 (logged with the traceback). Also notes a
    dependency coming back (one log line) on the first good answer after an outage."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if status:  # the response has started: nothing can be answered any more
                raise
            request = Request(scope)
            response = await _exception_response(request, exc)
            await response(scope, receive, send)
            return
        outages: OutageLog = scope["app"].state.outages
        if outages.any_down and status < 500:
            outages.up()


async def _exception_response(request: Request, exc: Exception) -> Response:
    dependency = dependency_of(exc)
    if dependency is not None:
        unavailable = ServiceUnavailable(f"The {dependency} is unavailable; retry later.")
        unavailable.__cause__ = exc
        return await _imm_error(request, unavailable)
    log.exception("unhandled error", exc_info=exc)
    return await _imm_error(request, ImmError("An internal error occurred."))


async def _healthz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services

    def ping() -> None:
        with services.db.session() as s:
            s.execute(text("SELECT 1"))

    await run_in_threadpool(ping)
    return JSONResponse({"status": "ok"})


async def _metrics(request: Request) -> Response:
    """Prometheus metrics (every owner's task counts: operators only). With
    ``OPENIMM_METRICS_TOKEN`` set: ``Authorization: Bearer <token>``; unset: dev mode only."""
    settings: Settings = request.app.state.services.settings
    token = settings.metrics_token
    if token:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise AuthError("/metrics needs 'Authorization: Bearer <OPENIMM_METRICS_TOKEN>'.")
    elif not settings.dev_mode:
        raise AuthError("/metrics is off: set OPENIMM_METRICS_TOKEN to scrape it.")
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
