"""Deliveries lost with the broker connection go back to the queue as soon as the worker is
connected again.

When the connection to Redis drops, Celery forgets the messages it had received but not yet
started (their delivery tags belong to the lost channel: ``Consumer.on_close``), and a message
kombu had just taken off the queue may never have reached Celery at all. Redis keeps both in
its set of unacknowledged deliveries, and the reaper gives them back only after a lease (30 s:
until then it cannot tell a dead worker's delivery from a live one's), else the visibility
timeout does. A synchronous call whose job was among them (an EAS predict) waited that long
after a 3-second Redis restart, or, without a dispatcher, until its timeout.

A worker that has just reconnected knows more than the reaper: its connection was lost at a
known moment, and a delivery made before that moment whose task is still Running, unleased and
not queued again since, is not being run by anyone who will claim it — every consumer of that
Redis lost its connection too, and a live one claims within milliseconds of a delivery. So the
consumer bootstep below notes the time of the loss (``stop``: the consumer restarts after a
connection error) and, once connected again (``start``), gives those deliveries back to their
queues in a thread. A task that some worker was claiming at that very moment is delivered
twice; claims serialise on the row and only one delivery ends the task.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from celery import Celery, bootsteps

from pipeline import leases, queue
from pipeline.db import Database
from pipeline.ids import utcnow
from pipeline.outages import dependency_of
from pipeline.settings import Settings

log = logging.getLogger("openimm.worker")


def give_back_dropped(app: Celery, settings: Settings, db: Database, lost_at: float) -> int:
    """Give back the deliveries made before ``lost_at`` (epoch seconds, as Redis keeps
    delivery times) whose tasks nobody claimed or queued again since; returns how many."""
    ago = max(0.0, time.time() - lost_at)
    since = utcnow() - timedelta(seconds=ago)
    return queue.restore_unclaimed(
        app, settings, lambda ids: leases.unclaimed(db, ids, since), older_than=ago
    )


class GiveBackDropped(bootsteps.StartStopStep):
    """The consumer step: ``stop`` notes the loss, the next ``start`` gives back."""

    requires = ("celery.worker.consumer.tasks:Tasks",)  # connected and consuming again

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.lost_at: float | None = None
        self._db: Database | None = None
        self._lock = threading.Lock()

    def start(self, parent: Any) -> None:
        lost_at, self.lost_at = self.lost_at, None
        if lost_at is None:  # the first start: nothing was lost
            return
        args = (parent.app, lost_at)
        threading.Thread(target=self._give_back, args=args, name="give-back", daemon=True).start()

    def stop(self, parent: Any) -> None:
        self.lost_at = time.time()  # restarting (a lost connection) or shutting down

    def _give_back(self, app: Celery, lost_at: float) -> None:
        settings: Settings = app.conf.openimm_settings
        if settings.is_embedded_broker:
            return
        try:
            with self._lock:  # one at a time, on one small pool of its own
                if self._db is None:
                    self._db = Database(settings.db_url, pool_size=1)
                given = give_back_dropped(app, settings, self._db, lost_at)
        except Exception as exc:
            if dependency_of(exc) is None:
                log.exception("giving back deliveries dropped with the broker connection")
            else:  # the reaper's pass after a lease remains the backstop
                log.warning("deliveries dropped with the broker connection left to the reaper")
            return
        if given:
            log.warning("gave back %d message(s) dropped with the broker connection", given)
