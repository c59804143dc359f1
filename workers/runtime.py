"""Run one delivery of a task: claim, process, finalize. Knows nothing of HTTP.

State that is expensive (DB pool, object store client, device, models) lives in one
``WorkerState`` per worker process, built by ``init_process`` after fork.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from pipeline import tasks
from pipeline.db import Database
from pipeline.errors import TASK_MAX_ATTEMPTS, TASK_TIME_LIMIT_EXCEEDED, ImmError
from pipeline.settings import Settings
from pipeline.storage import MediaIO, ObjectStore, open_store
from workers import registry
from workers.context import Cancelled, JobContext, Transactional
from workers.device import pick_device

log = logging.getLogger("openimm.worker")


@dataclass
class WorkerState:
    settings: Settings
    db: Database
    store: ObjectStore
    media: MediaIO
    device: str
    name: str


_state: WorkerState | None = None
_state_lock = threading.Lock()  # a threads pool's jobs may ask for the state at once


def init_process(settings: Settings, process_index: int = 0) -> WorkerState:
    """Build this process's state (called from ``worker_process_init``)."""
    global _state
    store = open_store(settings)
    _state = WorkerState(
        settings=settings,
        db=Database(settings.db_url, pool_size=2),
        store=store,
        media=MediaIO(settings, store),
        device=pick_device(settings.device, process_index),
        name=f"{socket.gethostname()}:{os.getpid()}",
    )
    return _state


def state(settings: Settings) -> WorkerState:
    """This process's state; built on first use where no ``worker_process_init`` ran (a
    threads pool, or after a fork)."""
    with _state_lock:
        if _state is None or _state.name.rsplit(":", 1)[1] != str(os.getpid()):
            return init_process(settings)
        return _state


def run(task_id: str, settings: Settings) -> str:
    """Execute one delivery; returns the outcome (for logs and tests)."""
    st = state(settings)
    with st.db.session() as session:
        job = tasks.claim(session, task_id, st.name)
    if job is None:
        return "skipped"  # already terminal: a redelivery after success, or cancelled
    if job.attempts > settings.max_attempts:
        # Every earlier delivery killed its worker process: a poison job. Stop the loop.
        message = (
            f"The task was attempted {job.attempts - 1} times and each attempt lost its "
            f"worker process (crash or out of memory); giving up after "
            f"{settings.max_attempts}."
        )
        return _finish(st, job, tasks.FAILED, code=TASK_MAX_ATTEMPTS, message=message)
    return _process(st, job)


def _process(st: WorkerState, job: tasks.Claim) -> str:
    ctx = JobContext(
        task_id=job.task_id,
        task_type=job.task_type,
        request=job.request,
        settings=st.settings,
        store=st.store,
        media=st.media,
        workroot=Path(tempfile.gettempdir()),
        device=st.device,
        report=lambda pct: _report(st, job.task_id, pct),
    )
    try:
        result = registry.load(job.task_type)(ctx)
    except Cancelled:
        return "cancelled"
    except SoftTimeLimitExceeded:
        limit = st.settings.time_limit(job.task_type)
        return _finish(
            st,
            job,
            tasks.FAILED,
            code=TASK_TIME_LIMIT_EXCEEDED,
            message=f"The task exceeded its time limit of {limit} s.",
        )
    except Exception as exc:
        return _fail(st, job, exc)
    finally:
        ctx.cleanup()
    if isinstance(result, Transactional):
        return _commit(st, job, result)
    return _finish(st, job, tasks.SUCCEEDED, result=result)


def _commit(st: WorkerState, job: tasks.Claim, work: Transactional) -> str:
    """Apply a processor's database changes and end the task in one transaction."""
    try:
        with st.db.session() as session:
            if not tasks.hold_running(session, job.task_id):
                return "superseded"  # cancelled meanwhile: apply nothing
            result = work.apply(session)
            tasks.finalize(
                session, job.task_id, tasks.SUCCEEDED, result=result, started_at=job.start_time
            )
    except Exception as exc:
        return _fail(st, job, exc)
    return tasks.SUCCEEDED


def _fail(st: WorkerState, job: tasks.Claim, exc: Exception) -> str:
    """End the task Failed: an ImmError keeps its Code; anything else is an InternalError
    (logged with its traceback, since the user only sees its one-line message)."""
    if isinstance(exc, ImmError):
        return _finish(st, job, tasks.FAILED, code=exc.code, message=exc.message)
    log.exception("task %s failed", job.task_id, exc_info=exc)
    message = f"{type(exc).__name__}: {exc}"
    return _finish(st, job, tasks.FAILED, code="InternalError", message=message)


def _report(st: WorkerState, task_id: str, percent: int) -> bool:
    with st.db.session() as session:
        return tasks.set_progress(session, task_id, percent)


def _finish(
    st: WorkerState,
    job: tasks.Claim,
    status: str,
    *,
    code: str = "",
    message: str = "",
    result: dict[str, Any] | None = None,
) -> str:
    with st.db.session() as session:
        changed = tasks.finalize(
            session,
            job.task_id,
            status,
            code=code,
            message=message,
            result=result,
            started_at=job.start_time,
        )
    return status if changed else "superseded"
