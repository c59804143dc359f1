"""The replay cache: each signed request is accepted once within its signature's validity window.

A key is a request's signature (ACS3: it covers the ``x-acs-signature-nonce``, which must be
signed; MNS and EAS: it covers the ``Date`` and the body's MD5). ``first_use(key, ttl)``
atomically records the key for ``ttl`` seconds and says whether it was new. One interface,
three backends, chosen like the MNS message store:

- Redis (``OPENIMM_REDIS_URL`` set): ``SET openimm:replay:<key> 1 NX PX <ttl>``, shared by
  every API process of a distributed deployment;
- the database (PostgreSQL without Redis, or ``OPENIMM_REPLAY_CACHE=db``): table
  ``replay_keys`` (key primary key, expiry), shared by every API process on the database,
  purged of expired rows at most once a minute per process;
- memory (the embedded SQLite default, or ``OPENIMM_REPLAY_CACHE=memory``): one API process
  only, forgotten on restart; a SQLite write per request would cost more than the request.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Protocol

import redis
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from pipeline.db import Database
from pipeline.ids import utcnow
from pipeline.models import ReplayKey
from pipeline.settings import Settings

REDIS_PREFIX = "openimm:replay:"
PURGE_EVERY_SECONDS = 60.0


class ReplayCache(Protocol):
    def first_use(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds (and records it)."""
        ...


class MemoryReplayCache:
    """Keys in a dict with their expiry (monotonic clock); expired ones dropped as we go."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def first_use(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if now >= self._next_purge:
                self._until = {k: t for k, t in self._until.items() if t > now}
                self._next_purge = now + PURGE_EVERY_SECONDS
            if self._until.get(key, 0.0) > now:
                return False
            self._until[key] = now + ttl
            return True


class DbReplayCache:
    """Keys as rows; the primary key makes a second insert of the same key fail atomically."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._next_purge = 0.0

    def first_use(self, key: str, ttl: float) -> bool:
        now = utcnow()
        self._purge()
        try:
            with self.db.session() as s:
                row = s.get(ReplayKey, key)
                if row is not None:
                    if row.expires_at > now:
                        return False
                    s.delete(row)
                    s.flush()
                s.add(ReplayKey(key=key, expires_at=now + timedelta(seconds=ttl)))
        except IntegrityError:
            return False  # a concurrent request with the same key inserted it first
        return True

    def _purge(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_EVERY_SECONDS
        with self.db.session() as s:
            s.execute(delete(ReplayKey).where(ReplayKey.expires_at <= utcnow()))


class RedisReplayCache:
    """``SET NX PX``: one round trip, atomic across every API process using this Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RedisReplayCache:
        return cls(redis.Redis.from_url(url))

    def first_use(self, key: str, ttl: float) -> bool:
        millis = max(1, int(ttl * 1000))
        return bool(self.client.set(REDIS_PREFIX + key, b"1", nx=True, px=millis))


def open_replay_cache(settings: Settings, db: Database) -> ReplayCache:
    """The backend for ``settings``: as asked (``db``/``memory``), else Redis when there is one
    (``OPENIMM_REDIS_URL``, or a Redis broker: one SET NX per signed request is cheaper than a
    database INSERT on the create path), else the database when it is a server (PostgreSQL:
    maybe several API processes), else memory (embedded SQLite: one API process, and no write
    transaction on every GET)."""
    if settings.replay_cache == "memory":
        return MemoryReplayCache()
    if settings.replay_cache == "db":
        return DbReplayCache(db)
    redis_url = settings.redis_url or _redis_broker(settings.broker_url)
    if redis_url:
        return RedisReplayCache.from_url(redis_url)
    return MemoryReplayCache() if db.is_sqlite else DbReplayCache(db)


def _redis_broker(url: str) -> str:
    return url if url.startswith(("redis://", "rediss://")) else ""
