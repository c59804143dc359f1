"""Mount the console on the API's FastAPI app: its routers, static assets and error pages."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from pipeline.console import auth, files, media, people, pools, tasks
from pipeline.console.pages import PREFIX, STATIC_DIR, ConsoleError, error_page, redirect

FORM_BYTES = 1 << 20
PLAYGROUND_PREFIX = PREFIX + "/media/playground/"


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def body_limit(path: str) -> int:
    """Console forms are small; a playground upload may carry two files."""
    if path.startswith(PLAYGROUND_PREFIX):
        return 2 * media.MAX_UPLOAD_BYTES + FORM_BYTES
    return FORM_BYTES


async def _to_signin(request: Request, _exc: Exception) -> Response:
    here = request.url.path.removeprefix(PREFIX) or "/"
    if request.method != "GET":
        here = "/"
    if request.headers.get("x-console-partial"):  # a partial refresh: the page reloads itself
        return Response(status_code=401)
    query = urlencode({"next": here}) if here != "/" else ""
    return RedirectResponse(f"{PREFIX}/signin" + (f"?{query}" if query else ""), status_code=303)


async def _home(_request: Request) -> Response:
    return redirect("/people")


def mount(app: FastAPI) -> None:
    """Add ``/console`` (pages, ``/console/static``) to ``app``."""
    app.add_exception_handler(auth.SignInRequired, _to_signin)
    app.add_exception_handler(ConsoleError, error_page)
    root = APIRouter(prefix=PREFIX)
    root.include_router(auth.router)
    pages = APIRouter(dependencies=[Depends(auth.require)])
    pages.add_api_route("/", _home, methods=["GET"])
    for module in (people, tasks, pools, files, media):
        pages.include_router(module.router)
    root.include_router(pages)
    app.include_router(root, include_in_schema=False)  # pages, not API
    app.add_api_route(PREFIX, _home, methods=["GET"], include_in_schema=False)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC_DIR), name="console-static")
