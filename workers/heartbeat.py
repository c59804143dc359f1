"""The worker process's heartbeat: one statement per interval renews every lease it holds.

Started lazily in each pool process (after fork). The claim takes the lease and the terminal
write clears it, so the hot path pays nothing extra; a job shorter than an interval is never
renewed at all. A lease that could not be renewed because another delivery took the task over
(the reaper re-enqueued it) is marked *lost*: the job's next progress report stops it.
"""

from __future__ import annotations

import logging
import threading

from pipeline import tasks
from pipeline.db import Database
from pipeline.outages import OutageLog, dependency_of

log = logging.getLogger("openimm.worker")


class Heartbeat:
    """Holds the ids of the tasks this process runs and renews their leases in the
    background."""

    def __init__(
        self,
        db: Database,
        worker: str,
        outages: OutageLog,
        *,
        lease_seconds: float,
        interval: float,
    ) -> None:
        self.db, self.worker, self.outages = db, worker, outages
        self.lease_seconds, self.interval = lease_seconds, interval
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, task_id: str) -> None:
        with self._lock:
            self._held.add(task_id)
            self._lost.discard(task_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
            self._thread.start()

    def release(self, task_id: str) -> None:
        with self._lock:
            self._held.discard(task_id)
            self._lost.discard(task_id)

    def lost(self, task_id: str) -> bool:
        """True when another delivery took this task over: stop working on it."""
        with self._lock:
            return task_id in self._lost

    def beat(self) -> None:
        """Renew every held lease in one UPDATE. During an outage the lease simply runs on:
        a database back within the lease changes nothing."""
        with self._lock:
            held = set(self._held)
        if not held:
            return
        try:
            with self.db.session() as session:
                kept = tasks.renew_leases(session, self.worker, held, self.lease_seconds)
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                log.exception("lease renewal failed")
            else:
                self.outages.down(dependency, exc)
            return
        self.outages.up()
        with self._lock:
            # Only ids still held: a job that ended during the UPDATE is not "lost".
            self._lost |= (held - kept) & self._held

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
