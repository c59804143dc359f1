"""Database port: engine and session factory for PostgreSQL or SQLite.

Only this module and ``pipeline.models`` touch SQLAlchemy engine details; services receive a
``Database`` and open short transactions with ``db.session()``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from pipeline import fastjson
from pipeline.settings import Settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # busy_timeout first, so every later statement waits for a writer instead of failing.
    # WAL lets the API read while a worker writes. The mode is stored in the file, so it is
    # switched once: the switch needs an exclusive lock, and when several connections open at
    # once SQLite can answer SQLITE_BUSY to it without calling the busy handler (seen in CI as
    # "database is locked" from 8 threads on a fresh file). Hence: read the mode, and switch
    # with a short retry only when it is not WAL yet.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    _ensure_wal(cursor)
    cursor.close()


def _ensure_wal(cursor: Any, attempts: int = 50) -> None:
    for attempt in range(attempts):
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection before use only if it sat idle for ``idle_seconds``.

    Why not ``pool_pre_ping``: it costs a round trip per transaction on the hot path. A
    connection broken by a database restart has, by then, sat idle at least as long as the
    outage (one used during it failed and made the pool drop every older connection), so this
    catches the stale ones while a busy pool pays nothing. A failed ping raises
    ``DisconnectionError``: the pool replaces the connection and the caller never sees it.
    """

    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError("stale pooled connection") from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


# JSON columns (task requests and results, event contents) go through orjson (see fastjson).
_JSON: dict[str, Any] = {"json_serializer": fastjson.dumps, "json_deserializer": fastjson.loads}


def make_engine(url: str, *, pool_size: int = 10, ping_idle_seconds: float = 2.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **_JSON)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=20, pool_recycle=1800, **_JSON)
    _ping_when_idle(engine, ping_idle_seconds)
    return engine


class Database:
    """Owns the engine; hands out sessions that commit on success and roll back on error."""

    def __init__(self, url: str, *, pool_size: int = 10, ping_idle_seconds: float = 2.0) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, ping_idle_seconds=ping_idle_seconds)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        # Same pool; the connection is switched to autocommit for the checkout only.
        autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._single = sessionmaker(autocommit, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        if settings.db_url.startswith("sqlite"):
            settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings.db_url, ping_idle_seconds=settings.db_ping_idle_seconds)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def statement(self) -> Iterator[Session]:
        """A session for exactly one SQL statement, run without an explicit transaction.

        One statement is atomic by itself, so the ``BEGIN`` and ``COMMIT`` round trips that
        :meth:`session` pays around it buy nothing: on a loaded machine each round trip is a
        wake-up of the database backend, and the hot path of a short task (the worker's claim,
        the API's read of the finished row) is one statement each. Never run two statements
        that must apply together in this session; use :meth:`session` for those."""
        session = self._single()
        try:
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
