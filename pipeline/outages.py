"""Infrastructure outages: which errors mean "a dependency is down", and how to ride them out.

One place decides whether an exception is an *infrastructure* error (the database, the broker,
Redis or the object store is unreachable) or the task's / request's own error. Infrastructure
errors never fail a task and never answer 500: workers wait and retry with backoff, the API
answers 503 ``ServiceUnavailable``. :class:`OutageLog` logs one line per state change
("database unavailable" … "database back") instead of a traceback per attempt.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa_exc

DATABASE, BROKER, REDIS, OBJECT_STORE = "database", "broker", "redis", "object store"
# SQLite "OperationalError"s that are contention or I/O, not a bug in a statement.
SQLITE_TRANSIENT = ("database is locked", "unable to open database", "disk i/o error")
# S3 error codes that mean the store is overloaded or down, not that the request is wrong.
S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
)
MAX_CHAIN = 8  # causes followed when classifying (wrapped driver errors)
T = TypeVar("T")


def dependency_of(exc: BaseException) -> str | None:
    """The dependency an exception says is unavailable, or ``None`` for an ordinary error.

    Follows ``__cause__``/``__context__`` so driver errors wrapped at a boundary (e.g. an
    object store error raised ``from`` a botocore connection error) are still recognised.
    """
    seen: BaseException | None = exc
    for _ in range(MAX_CHAIN):
        if seen is None:
            return None
        kind = _direct(seen)
        if kind is not None:
            return kind
        seen = seen.__cause__ or seen.__context__
    return None


def _direct(exc: BaseException) -> str | None:
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return DATABASE
        return _dbapi(exc.orig)
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return DATABASE  # TimeoutError: no pooled connection came free (database stalled)
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return DATABASE
    if isinstance(exc, KombuOperationalError):
        return BROKER
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, BusyLoadingError)):
        return REDIS
    return _object_store(exc)


def _dbapi(orig: BaseException | None) -> str | None:
    if isinstance(orig, (psycopg.OperationalError, psycopg.InterfaceError)):
        return DATABASE
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return DATABASE if any(t in text for t in SQLITE_TRANSIENT) else None
    return None


def _object_store(exc: BaseException) -> str | None:
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - botocore ships with the S3 backend
        return None
    transient = (
        boto.EndpointConnectionError,
        boto.ConnectionClosedError,
        boto.ConnectTimeoutError,
        boto.ReadTimeoutError,
    )
    if isinstance(exc, transient):
        return OBJECT_STORE
    if isinstance(exc, boto.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in S3_TRANSIENT_CODES or status in {"500", "503"}:
            return OBJECT_STORE
    return None


@dataclass
class Backoff:
    """Exponential delays from ``first`` up to ``cap`` seconds."""

    first: float = 0.1
    cap: float = 5.0
    factor: float = 2.0
    current: float = field(default=0.0, init=False)

    def next(self) -> float:
        self.current = self.first if not self.current else min(self.cap, self.current * self.factor)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class OutageLog:
    """Logs each dependency going down and coming back, once per change (thread-safe)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._down: dict[str, float] = {}
        self._lock = threading.Lock()

    def down(self, dependency: str, exc: BaseException) -> None:
        with self._lock:
            if dependency in self._down:
                return
            self._down[dependency] = time.monotonic()
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        self.logger.warning("%s unavailable: %s: %s", dependency, type(exc).__name__, first_line)

    def up(self, dependency: str | None = None) -> None:
        """Mark ``dependency`` (or every dependency, when ``None``) as available again."""
        with self._lock:
            if not self._down:
                return
            names = [dependency] if dependency else list(self._down)
            back = {n: self._down.pop(n) for n in names if n in self._down}
        for name, since in back.items():
            self.logger.warning("%s back after %.1f s", name, time.monotonic() - since)

    @property
    def any_down(self) -> bool:
        return bool(self._down)


class StillUnavailable(Exception):
    """A dependency stayed unavailable for longer than the caller was willing to wait."""

    def __init__(self, dependency: str, cause: BaseException) -> None:
        super().__init__(f"{dependency} unavailable: {cause}")
        self.dependency = dependency


def retrying(
    call: Callable[[], T],
    outages: OutageLog,
    *,
    give_up_after: float,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; while it fails with an infrastructure error, wait (backoff) and retry.

    Other errors propagate at once. After ``give_up_after`` seconds of outage raises
    :class:`StillUnavailable`. ``call`` must be safe to repeat (its own transaction).
    """
    delays = backoff or Backoff()
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            value = call()
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            outages.down(dependency, exc)
            if time.monotonic() >= deadline:
                raise StillUnavailable(dependency, exc) from exc
            sleep(delays.next())
            continue
        if outages.any_down:
            outages.up()
        return value
