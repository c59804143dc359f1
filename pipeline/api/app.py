"""The FastAPI application: lifespan wiring, the one error handler, ops endpoints."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import credentials, migrate, queue
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
from pipeline.api.services import Services
from pipeline.db import Database
from pipeline.errors import ImmError
from pipeline.ids import request_id
from pipeline.metrics import OpenimmCollector
from pipeline.notify.store import open_message_store
from pipeline.settings import Settings
from pipeline.storage import open_store

log = logging.getLogger("openimm.api")


def build_services(settings: Settings) -> Services:
    db = Database.from_settings(settings)
    return Services(
        messages=open_message_store(settings, db),
        settings=settings,
        db=db,
        celery=queue.make_celery(settings),
        store=open_store(settings),
        keys=credentials.load_keys(settings),
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
        yield
        services.db.dispose()

    app = FastAPI(title="openimm", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(ImmError, _imm_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(rpc.router)
    app.include_router(objects.router)
    app.include_router(mns.router)
    app.include_router(eas.router)
    app.add_api_route("/healthz", _healthz, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    return app


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
    if mns.is_mns_path(request.url.path):
        return mns.error_response(request, exc)
    if eas.is_eas_path(request.url.path):
        return eas.error_response(request, exc)
    return JSONResponse(error_body(request, exc.code, exc.message), status_code=exc.http_status)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body(request, "InternalError", "An internal error occurred."), status_code=500
    )


async def _healthz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services

    def ping() -> None:
        with services.db.session() as s:
            s.execute(text("SELECT 1"))

    await run_in_threadpool(ping)
    return JSONResponse({"status": "ok"})


async def _metrics(request: Request) -> Response:
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
