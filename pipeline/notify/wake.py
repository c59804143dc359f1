"""Push wake-ups for MNS long polling and for synchronous calls waiting on a task.

A receiver waiting on an empty queue sleeps on an asyncio event instead of re-reading the
store; a synchronous call (EAS predict, SearchImageFigureCluster) waiting on its task sleeps
on a :class:`ThreadWaiter` keyed ``task:<id>``. Whoever puts a message wakes it:

- in the same process (SendMessage in the API, the dispatcher thread of ``openimm serve``):
  directly, through the process-wide :data:`HUB`;
- from another process: PostgreSQL ``NOTIFY`` (database store on PostgreSQL) or Redis
  pub/sub (Redis store), heard by one listener thread per API process that re-broadcasts into
  the hub. Notifications a process sent itself are ignored there (the hub already had them).
A task's end is announced by a trigger on the outbox (``pg_notify`` on :data:`TASK_CHANNEL`,
migration 0008) to the API's :func:`task_listener`, and in ``openimm serve`` directly by the
dispatcher thread that reads every outbox event.

Wake-ups are hints, never the source of truth: a woken receiver re-reads the store, and every
receiver also re-checks on a slow fallback interval, so a lost notification (listener
reconnecting, SQLite across processes) costs latency, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from sqlalchemy import make_url

from pipeline.errors import LongPollLimitExceeded

log = logging.getLogger("openimm.wake")
CHANNEL = "openimm_mns"  # PostgreSQL LISTEN channel and Redis pub/sub channel
TASK_CHANNEL = "openimm_tasks"  # PostgreSQL channel: payload = id of a task that ended
# Tags this process's own notifications so its listener can skip them.
PROCESS_TOKEN = secrets.token_hex(8)
RECONNECT_SECONDS = 1.0


class Waiter:
    """One waiting receiver: an event set (thread-safely) by :meth:`wake`."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        # A closed loop (server shutting down) has nobody left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout``; True if woken. Clears the event, so a put that
        lands after the caller's next store read wakes the next wait at once."""
        try:
            await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))
            woken = True
        except TimeoutError:
            woken = False
        self._event.clear()
        return woken


class ThreadWaiter:
    """A waiter for a plain (threadpool) thread: the same contract on a threading.Event."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block until woken or ``timeout``; True if woken. Clears the event (see Waiter)."""
        woken = self._event.wait(max(timeout, 0.0))
        self._event.clear()
        return woken


_W = TypeVar("_W", Waiter, ThreadWaiter)


class Hub:
    """Waiting receivers per queue key, in this process. ``notify`` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter | ThreadWaiter]] = {}

    @contextmanager
    def waiting(self, key: str) -> Iterator[Waiter]:
        """Register a waiter for ``key`` (before the store read it guards) for the block."""
        with self._registered(key, Waiter()) as waiter:
            yield waiter

    @contextmanager
    def waiting_thread(self, key: str) -> Iterator[ThreadWaiter]:
        """:meth:`waiting` for a caller in a plain thread rather than on the event loop."""
        with self._registered(key, ThreadWaiter()) as waiter:
            yield waiter

    @contextmanager
    def _registered(self, key: str, waiter: _W) -> Iterator[_W]:
        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                group = self._waiters.get(key)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._waiters[key]

    def notify(self, key: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for waiter in waiters:
            waiter.wake()

    def waiting_count(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._waiters.values())


HUB = Hub()


def payload(queue_id: int) -> str:
    """What a put publishes to other processes: the queue id and this process's token."""
    return f"{queue_id}:{PROCESS_TOKEN}"


def dispatch(namespace: str, message: str) -> None:
    """Re-broadcast a notification from another process into this process's hub."""
    queue_id, _, token = message.partition(":")
    if token != PROCESS_TOKEN:
        HUB.notify(f"{namespace}:{queue_id}")


def task_key(task_id: str) -> str:
    """The hub key a synchronous call waits on for its task to end."""
    return f"task:{task_id}"


class Listener:
    """A daemon thread running ``listen(self)`` — which subscribes, sets :attr:`ready`, then
    dispatches notifications until :attr:`stop` is set or its connection fails — and
    reconnecting after failures."""

    def __init__(self, name: str, listen: Callable[[Listener], None]) -> None:
        self._listen = listen
        self.stop = threading.Event()
        self.ready = threading.Event()  # subscribed: notifications sent from now on arrive
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._listen(self)
            except Exception:  # a dropped connection: waiters fall back to re-checking
                log.warning("%s lost its connection; reconnecting", self._thread.name)
                self.ready.clear()
                self.stop.wait(RECONNECT_SECONDS)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=5)


def pg_listen(url: str, channel: str, handle: Callable[[str], None]) -> Callable[[Listener], None]:
    """A :class:`Listener` body: PostgreSQL LISTEN ``channel`` on a dedicated connection (not
    one of the pool's), passing each notification's payload to ``handle``."""

    def listen(listener: Listener) -> None:
        dsn = make_url(url).set(drivername="postgresql")
        with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f"LISTEN {channel}")
            listener.ready.set()
            while not listener.stop.is_set():
                for note in conn.notifies(timeout=1.0):
                    handle(note.payload)

    return listen


def task_listener(url: str) -> Listener:
    """Hear task ends announced on PostgreSQL (migration 0008's outbox trigger) and wake the
    synchronous calls of this process waiting on them."""

    def wake_task(task_id: str) -> None:
        HUB.notify(task_key(task_id))

    return Listener("task-pg-listen", pg_listen(url, TASK_CHANNEL, wake_task))


class LongPolls:
    """Counts each owner's waiting long polls in this API process, up to a cap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}

    @contextmanager
    def slot(self, owner: str, cap: int) -> Iterator[None]:
        with self._lock:
            if self._active.get(owner, 0) >= cap:
                raise LongPollLimitExceeded(
                    f"This owner already has {cap} long-polling receivers waiting "
                    "(OPENIMM_MNS_MAX_LONG_POLLS_PER_OWNER); retry later or use fewer."
                )
            self._active[owner] = self._active.get(owner, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._active[owner] -= 1
                if not self._active[owner]:
                    del self._active[owner]
