"""Diagnostic jobs (enabled by OPENIMM_DIAGNOSTICS=1): exercise the task path without media.

Modes: ``Noop`` (benchmarks), ``Sleep`` (long job with progress; SIGKILL and cancel drills),
``Crash`` (the worker process dies: a poison job), ``Fail`` (a clean failure with a Code).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pipeline.errors import InvalidArgument
from workers.context import JobContext

STEP_SECONDS = 0.1


def process(ctx: JobContext) -> dict[str, Any]:
    mode = ctx.request.get("Mode", "Noop")
    if mode == "Noop":
        return {"Mode": mode}
    if mode == "Sleep":
        return _sleep(ctx, float(ctx.request.get("Seconds", 1)))
    if mode == "Crash":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InvalidArgument("Diagnostic task asked to fail (Mode=Fail).")


def _sleep(ctx: JobContext, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(STEP_SECONDS, left))  # a job doing work in steps, reporting progress
        ctx.progress(int(100 * (time.monotonic() - start) / seconds))
    return {"Mode": "Sleep", "Seconds": seconds}
