"""Queues and pools: queue depths (with their recent history as a small plot), workers, their
processes and in-flight tasks, and the ``openimm pools`` controls as buttons.

Pools serve every owner, so this page is for operators only (``OPENIMM_CONSOLE_OPERATORS``;
unset: the owner of a single-key server)."""

from __future__ import annotations

import time
from collections import deque
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from pipeline import auth as api_auth
from pipeline import pools as pool_control
from pipeline.console import auth, plots
from pipeline.console.pages import ConsoleError, owner, redirect, render, services
from pipeline.errors import ImmError
from pipeline.queue import all_queues

router = APIRouter()
HISTORY_POINTS = 120  # one per refresh of an open pools page (every few seconds)
ACTIONS = ("grow", "shrink", "add-queue", "cancel-queue")
# Depth samples of this API process: (unix time, {queue: depth}).
_history: deque[tuple[float, dict[str, int]]] = deque(maxlen=HISTORY_POINTS)


def is_operator(request: Request) -> bool:
    svc = services(request)
    named = {k.strip() for k in svc.settings.console_operators.split(",") if k.strip()}
    who = owner(request)
    if named:
        return who in named
    if api_auth.anonymous_owner(svc.keys, svc.settings.dev_mode) is not None:
        return True
    return len(svc.keys) == 1 and who in svc.keys


def _require_operator(request: Request) -> None:
    if not is_operator(request):
        raise ConsoleError(
            "Worker pools serve every owner: only operators (OPENIMM_CONSOLE_OPERATORS) see them.",
            403,
        )


async def _snapshot(request: Request) -> dict[str, Any]:
    settings = services(request).settings
    snap = await run_in_threadpool(pool_control.snapshot, settings)
    _history.append((time.time(), dict(snap.depths)))
    series = {q: [(t, depths.get(q, 0)) for t, depths in _history] for q in sorted(snap.depths)}
    return {
        "depths": sorted(snap.depths.items()),
        "pools": snap.pools,
        "plot": plots.depth_plot(series),
        "queues": all_queues(settings),
    }


@router.get("/pools")
async def pools_page(request: Request) -> Response:
    _require_operator(request)
    return render(request, "pools.html", nav="pools", **await _snapshot(request))


@router.get("/pools/live")
async def pools_live(request: Request) -> Response:
    _require_operator(request)
    return render(request, "_pools.html", **await _snapshot(request))


@router.post("/pools/control")
async def control(
    request: Request,
    action: Annotated[str, Form()] = "",
    worker: Annotated[str, Form()] = "",
    value: Annotated[str, Form()] = "",
    _session: auth.Session = Depends(auth.check_csrf),
) -> Response:
    _require_operator(request)
    if action not in ACTIONS or not worker:
        return redirect("/pools", error=f"Choose a worker and one of {', '.join(ACTIONS)}.")
    settings = services(request).settings
    if action in ("add-queue", "cancel-queue") and value not in all_queues(settings):
        return redirect("/pools", error=f"Unknown queue {value[:64]!r}.")
    try:
        replies = await run_in_threadpool(pool_control.control, settings, action, worker, value)
    except ImmError as exc:
        return redirect("/pools", error=exc.message)
    if not replies:
        return redirect("/pools", error=f"{worker} did not answer.")
    return redirect("/pools", notice=f"{action} {value} sent to {worker}: {_summary(replies)}")


def _summary(replies: Any) -> str:
    """The workers' replies to a control command, shortened for a flash message."""
    parts = []
    for reply in replies if isinstance(replies, list) else [replies]:
        if isinstance(reply, dict):
            for answer in reply.values():
                parts.append(str(answer.get("ok") or answer.get("error") or answer)[:120])
    return "; ".join(parts) or "ok"
