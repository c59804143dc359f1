"""Task leases: the reaper that restarts a dead worker's jobs, and the invariant it keeps.

A claim gives its worker a lease on the task (``tasks.claim``), the worker's heartbeat renews
it (``workers.heartbeat``), the terminal write clears it. A Running task is therefore either
*queued* (no lease: its message waits in the broker) or *leased* (a live worker runs it). The
reaper turns a leased task whose lease expired (its worker died, or lost the database for
longer than a lease) back into a queued one: it enqueues a new message, then clears the lease,
in one transaction. The broker's visibility timeout stays as the last backstop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from pipeline import queue
from pipeline.db import Database
from pipeline.ids import utcnow
from pipeline.settings import Settings
from pipeline.tasks import RUNNING, TASKS

log = logging.getLogger("openimm.reaper")
REAP_BATCH = 500
# Queued tasks younger than this are not judged by ``check``: the API writes the task row a
# moment before it enqueues, and the embedded broker drops a file just before the claim.
QUEUED_GRACE = timedelta(seconds=10)


def expired(session: Session, now: datetime, *, lock: bool) -> list[Any]:
    """Running tasks whose lease has expired (oldest first), locked when ``lock``."""
    return _leased(session, TASKS.c.lease_expires_at < now, lock=lock)


def _leased(session: Session, which: ColumnElement[bool], *, lock: bool) -> list[Any]:
    query = (
        select(TASKS.c.id, TASKS.c.task_type, TASKS.c.queue)
        .where(TASKS.c.status == RUNNING, TASKS.c.lease_expires_at.is_not(None), which)
        .order_by(TASKS.c.lease_expires_at)
        .limit(REAP_BATCH)
    )
    if lock:  # two reapers (dispatcher replicas) never re-enqueue the same task twice
        query = query.with_for_update(skip_locked=True)
    return list(session.execute(query).all())


def _queue_again(
    session: Session,
    rows: list[Any],
    which: ColumnElement[bool],
    now: datetime,
    celery: Celery,
    settings: Settings,
) -> None:
    """Send ``rows`` (from :func:`expired` / ``_leased``) to their queues, then release
    them: no lease, no holder (a late original can no longer renew or report). Messages
    first, so a broker error leaves the tasks leased for the next pass, never lost.
    ``which`` is the selection again: a row that changed meanwhile is not released."""
    for row in rows:
        queue.enqueue(celery, row.id, row.task_type, row.queue, settings)
    if rows:
        session.execute(
            TASKS.update()
            .where(TASKS.c.id.in_([row.id for row in rows]), TASKS.c.status == RUNNING, which)
            .values(lease_expires_at=None, worker="", heartbeat_at=now)
        )


def requeue_held_by(settings: Settings, db: Database, celery: Celery, holder: str) -> int:
    """Queue again, at once, the Running tasks leased by ``holder`` (``host:pid``), a process
    known to be dead: its supervisor saw it exit. What the reaper does once a lease expires,
    without waiting for the lease. Returns how many."""
    held = TASKS.c.worker == holder
    with db.session() as s:
        rows = _leased(s, held, lock=not db.is_sqlite)
        _queue_again(s, rows, held, utcnow(), celery, settings)
    return len(rows)


class Reaper:
    """Re-enqueues expired leases; ``maybe_run`` is cheap to call from a busy loop."""

    def __init__(self, settings: Settings, db: Database, celery: Celery | None = None) -> None:
        self.settings, self.db = settings, db
        self.celery = celery or queue.make_celery(settings)
        self._next_run = 0.0

    def maybe_run(self, monotonic_now: float) -> int:
        if monotonic_now < self._next_run:
            return 0
        self._next_run = monotonic_now + self.settings.reaper_interval_seconds
        return self.run_once()

    def run_once(self) -> int:
        """One pass; returns how many tasks were re-enqueued. The message is sent before the
        lease is cleared, so a broker error leaves the task to the next pass, never lost."""
        now = utcnow()
        with self.db.session() as s:
            rows = expired(s, now, lock=not self.db.is_sqlite)
            _queue_again(s, rows, TASKS.c.lease_expires_at < now, now, self.celery, self.settings)
        if rows:
            log.warning(
                "re-enqueued %d task(s) whose worker stopped renewing its lease: %s",
                len(rows),
                ", ".join(row.id for row in rows[:5]) + (" …" if len(rows) > 5 else ""),
            )
        # A live worker claims right after delivery, so one unclaimed for a whole lease is
        # a dead worker's. (A live one that waited out a longer outage then claims too: the
        # later claim takes the lease over and only one of them ends the task.)
        restored = queue.restore_unclaimed(
            self.celery, self.settings, self._unclaimed, self.settings.lease_seconds
        )
        if restored:
            log.warning("gave back %d message(s) a dead worker took but never claimed", restored)
        return len(rows) + restored

    def _unclaimed(self, task_ids: set[str]) -> set[str]:
        """Unclaimed, and not queued again by this reaper within the last lease
        (``_queue_again`` stamps ``heartbeat_at``): the dead worker's old delivery of a task
        just re-enqueued is left to expire, rather than sent a second time."""
        quiet_since = utcnow() - timedelta(seconds=self.settings.lease_seconds)
        return unclaimed(self.db, task_ids, quiet_since)


def unclaimed(db: Database, task_ids: set[str], quiet_since: datetime) -> set[str]:
    """Those of ``task_ids`` still Running without a lease, created (or released by the
    reaper) before ``quiet_since``: nobody claimed their delivery and nobody queued them
    again since."""
    with db.session() as s:
        return set(
            s.scalars(
                select(TASKS.c.id).where(
                    TASKS.c.id.in_(sorted(task_ids)),
                    TASKS.c.status == RUNNING,
                    TASKS.c.lease_expires_at.is_(None),
                    func.coalesce(TASKS.c.heartbeat_at, TASKS.c.start_time) < quiet_since,
                )
            )
        )


@dataclass
class Report:
    """What ``check`` found: Running tasks by state, and the ones breaking the invariant."""

    leased: int = 0
    queued: int = 0
    lost: list[str] = field(default_factory=list)  # no live lease and no queued message
    overdue: list[str] = field(default_factory=list)  # lease expired and not yet reaped

    @property
    def ok(self) -> bool:
        return not self.lost and not self.overdue


def judge(
    running: Iterable[Any], queued_ids: set[str], now: datetime, settings: Settings
) -> Report:
    """Every Running task has a live lease or a queued message. A lease expired for longer
    than a reaper pass (plus slack) means no reaper is running: ``overdue``."""
    report = Report()
    slack = timedelta(seconds=settings.reaper_interval_seconds * 2 + 5)
    for row in running:
        if row.lease_expires_at is not None:
            report.leased += 1
            if row.lease_expires_at < now - slack and row.id not in queued_ids:
                report.overdue.append(row.id)
        elif row.id in queued_ids:
            report.queued += 1
        elif (row.heartbeat_at or row.start_time) > now - QUEUED_GRACE:
            report.queued += 1  # just created / just released: its message is on the way
        else:
            report.lost.append(row.id)
    return report


def check(settings: Settings, db: Database, celery: Celery | None = None) -> Report:
    """Check the lease invariant against the database and the broker (``openimm doctor``)."""
    app = celery or queue.make_celery(settings)
    with db.session() as s:
        running = s.execute(
            select(
                TASKS.c.id, TASKS.c.lease_expires_at, TASKS.c.heartbeat_at, TASKS.c.start_time
            ).where(TASKS.c.status == RUNNING)
        ).all()
    queued = queue.queued_task_ids(app, settings)
    report = judge(running, queued, utcnow(), settings)
    if report.lost:
        # A task can leave its queue for a claim between the two reads: ask the database
        # again about the suspects; only those still unleased and Running are lost.
        with db.session() as s:
            still = s.scalars(
                select(TASKS.c.id).where(
                    TASKS.c.id.in_(report.lost),
                    TASKS.c.status == RUNNING,
                    TASKS.c.lease_expires_at.is_(None),
                )
            ).all()
        report.lost = sorted(set(still) - queue.queued_task_ids(app, settings))
    return report
