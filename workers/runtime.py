"""Run one delivery of a task: claim, process, finalize. Knows nothing of HTTP.

State that is expensive (DB pool, object store client, device, models) lives in one
``WorkerState`` per worker process, built by ``init_process`` after fork.

Infrastructure errors (``pipeline.outages``) are never task failures: the claim, the processor
and the terminal write are retried with backoff while the dependency is away; after
``outage_wait_seconds`` :class:`StillUnavailable` reaches the Celery layer, which gives the
message back to the queue. Only the task's own errors end it Failed.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from pipeline import tasks
from pipeline.buckets import BucketPolicy
from pipeline.db import Database
from pipeline.errors import TASK_MAX_ATTEMPTS, TASK_TIME_LIMIT_EXCEEDED, ImmError
from pipeline.outages import OutageLog, StillUnavailable, dependency_of, retrying
from pipeline.settings import Settings
from pipeline.storage import MediaIO, ObjectStore, ScopedStore, open_store
from workers import registry, scrub
from workers.context import Cancelled, JobContext, Transactional
from workers.device import pick_device
from workers.heartbeat import Heartbeat

log = logging.getLogger("openimm.worker")
T = TypeVar("T")
__all__ = ["StillUnavailable", "WorkerState", "init_process", "run"]


@dataclass
class WorkerState:
    settings: Settings
    db: Database
    store: ObjectStore  # raw: jobs get it scoped to their owner (``_process``)
    buckets: BucketPolicy
    process_index: int  # in its pool: picks the GPU round-robin
    name: str
    outages: OutageLog
    heartbeat: Heartbeat

    @cached_property
    def device(self) -> str:
        """Picked on first use, not in ``init_process``: it imports torch (8-11 s on a loaded
        2-core machine), which only jobs running torch models need; queues that do have torch
        imported before the fork (``workers.warmup``)."""
        return pick_device(self.settings.device, self.process_index)


_state: WorkerState | None = None
_state_lock = threading.Lock()  # a threads pool's jobs may ask for the state at once


def init_process(settings: Settings, process_index: int = 0, jobs: int = 1) -> WorkerState:
    """Build this process's state (called from ``worker_process_init``, or by a threads
    pool before it starts, with ``jobs`` its concurrency).

    The database pool keeps a connection per job that may run at once (at least 2: the
    heartbeat has its own). SQLAlchemy closes a connection checked in beyond ``pool_size``,
    so a threads pool of 16 jobs on a pool of 2 opened and closed a PostgreSQL connection
    (a server process fork and an authentication) for most of its transactions."""
    global _state
    store = open_store(settings)
    db = Database(
        settings.db_url,
        pool_size=max(2, jobs + 1),
        ping_idle_seconds=settings.db_ping_idle_seconds,
    )
    name = f"{socket.gethostname()}:{os.getpid()}"
    outages = OutageLog(log)
    _state = WorkerState(
        settings=settings,
        db=db,
        store=store,
        buckets=BucketPolicy(db, store, settings),
        process_index=process_index,
        name=name,
        outages=outages,
        heartbeat=Heartbeat(
            db,
            name,
            outages,
            lease_seconds=settings.lease_seconds,
            interval=settings.heartbeat_interval,
        ),
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
    job = _wait(st, lambda: _claim(st, task_id))
    if job is None:
        return "skipped"  # already terminal: a redelivery after success, or cancelled
    st.heartbeat.hold(job.task_id)
    try:
        if job.attempts > settings.max_attempts:
            # Every earlier delivery killed its worker process: a poison job. Stop the loop.
            message = (
                f"The task was attempted {job.attempts - 1} times and each attempt lost its "
                f"worker process (crash or out of memory); giving up after "
                f"{settings.max_attempts}."
            )
            return _finish(st, job, tasks.FAILED, code=TASK_MAX_ATTEMPTS, message=message)
        return _process(st, job)
    finally:
        st.heartbeat.release(job.task_id)


def _wait(st: WorkerState, call: Callable[[], T]) -> T:
    """``call``, retried with backoff while a dependency is unavailable (see module doc)."""
    return retrying(call, st.outages, give_up_after=st.settings.outage_wait_seconds)


def _claim(st: WorkerState, task_id: str) -> tasks.Claim | None:
    with st.db.statement() as session:  # the claim is one UPDATE … RETURNING
        return tasks.claim(session, task_id, st.name, st.settings.lease_seconds)


def _context(st: WorkerState, job: tasks.Claim) -> JobContext:
    store = ScopedStore(st.store, st.buckets, job.owner)  # only the task owner's buckets
    return JobContext(
        task_id=job.task_id,
        task_type=job.task_type,
        request=job.request,
        settings=st.settings,
        store=store,
        media=MediaIO(st.settings, store),
        workroot=Path(tempfile.gettempdir()),
        device_of=lambda: st.device,
        report=lambda pct: _report(st, job.task_id, pct),
    )


def _compute(st: WorkerState, job: tasks.Claim) -> Any:
    """One run of the processor in a fresh context (a retry after an outage starts clean)."""
    ctx = _context(st, job)
    try:
        return registry.load(job.task_type)(ctx)
    finally:
        ctx.cleanup()


def _process(st: WorkerState, job: tasks.Claim) -> str:
    try:
        result = _wait(st, lambda: _compute(st, job))
    except Cancelled:
        return "cancelled"
    except StillUnavailable:
        raise
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
    if isinstance(result, Transactional):
        return _commit(st, job, result)
    return _finish(st, job, tasks.SUCCEEDED, result=result)


def _commit(st: WorkerState, job: tasks.Claim, work: Transactional) -> str:
    """Apply a processor's database changes and end the task in one transaction (retried as
    a whole after an outage: a failed transaction applied nothing)."""

    def apply() -> str:
        with st.db.session() as session:
            if not tasks.hold_running(session, job.task_id):
                return "superseded"  # cancelled meanwhile: apply nothing
            result = work.apply(session)
            tasks.finalize(
                session, job.task_id, tasks.SUCCEEDED, result=result, started_at=job.start_time
            )
        return tasks.SUCCEEDED

    try:
        return _wait(st, apply)
    except StillUnavailable:
        raise
    except Exception as exc:
        return _fail(st, job, exc)


def _fail(st: WorkerState, job: tasks.Claim, exc: Exception) -> str:
    """End the task Failed: an ImmError keeps its Code; anything else is an InternalError
    (logged with its traceback, since the user only sees its one-line message)."""
    roots = scrub.private_roots(st.settings)  # no worker temp paths in what users see
    if isinstance(exc, ImmError):
        message = scrub.scrub_paths(exc.message, roots)
        return _finish(st, job, tasks.FAILED, code=exc.code, message=message)
    log.exception("task %s failed", job.task_id, exc_info=exc)
    message = scrub.scrub_paths(f"{type(exc).__name__}: {exc}", roots)
    return _finish(st, job, tasks.FAILED, code="InternalError", message=message)


def _report(st: WorkerState, task_id: str, percent: int) -> bool:
    """Store progress; False stops the job (cancelled, or taken over by another delivery).
    An outage does not stop it: progress is advisory, the lease outlives short outages."""
    if st.heartbeat.lost(task_id):
        return False
    try:
        with st.db.session() as session:
            return tasks.set_progress(session, task_id, percent, worker=st.name)
    except Exception as exc:
        dependency = dependency_of(exc)
        if dependency is None:
            raise
        st.outages.down(dependency, exc)
        return True


def _finish(
    st: WorkerState,
    job: tasks.Claim,
    status: str,
    *,
    code: str = "",
    message: str = "",
    result: dict[str, Any] | None = None,
) -> str:
    """The terminal write, retried while the database is away: it is a compare-and-set, so
    a retry after a commit whose answer was lost changes nothing ("superseded")."""

    def write() -> bool:
        if status == tasks.SUCCEEDED and result is not None and not st.db.is_sqlite:
            with st.db.statement() as session:  # the common end: one statement, no BEGIN
                return tasks.finish_claimed(session, job, result, message=message)
        with st.db.session() as session:
            return tasks.finalize(
                session,
                job.task_id,
                status,
                code=code,
                message=message,
                result=result,
                started_at=job.start_time,
            )

    return status if _wait(st, write) else "superseded"
