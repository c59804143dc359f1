"""The replay cache contract on every backend: memory, SQLite, real PostgreSQL, real Redis.
Each key is accepted once within its TTL, also when many threads (standing in for several API
processes) race with the same key, and again once the TTL has passed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from pipeline import migrate
from pipeline.db import Database
from pipeline.replay import (
    DbReplayCache,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    open_replay_cache,
)
from pipeline.settings import Settings
from tests.e2e.stack import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def caches(request: pytest.FixtureRequest, tmp_path: Path) -> list[ReplayCache]:
    """Two cache instances over one backend (two API processes sharing it)."""
    if request.param == "memory":
        cache = MemoryReplayCache()
        return [cache, cache]
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return [RedisReplayCache(redis.Redis.from_url(url)) for _ in range(2)]
    if request.param == "postgres":
        url = request.getfixturevalue("fresh_database")
        settings = Settings(data_dir=tmp_path, database_url=url)
    else:
        settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings.db_url)
    return [DbReplayCache(Database.from_settings(settings)) for _ in range(2)]


def test_a_key_is_accepted_once_per_window(caches: list[ReplayCache]) -> None:
    first, second = caches
    assert first.first_use("acs3:sig-1", 60)
    assert not first.first_use("acs3:sig-1", 60)
    assert not second.first_use("acs3:sig-1", 60)  # the other process sees it too
    assert second.first_use("acs3:sig-2", 60)


def test_a_race_on_one_key_has_one_winner(caches: list[ReplayCache]) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: caches[n % 2].first_use("mns:raced", 60), range(32)))
    assert results.count(True) == 1


def test_a_key_is_accepted_again_after_its_ttl(caches: list[ReplayCache]) -> None:
    assert caches[0].first_use("eas:short", 0.3)
    assert not caches[1].first_use("eas:short", 0.3)
    wait_until(lambda: caches[1].first_use("eas:short", 0.3), 10, what="ttl to pass")


def test_the_backend_follows_the_settings(
    tmp_path: Path, redis_url: str, fresh_database: str
) -> None:
    db = Database.from_settings(Settings(data_dir=tmp_path))
    postgres = Database.from_settings(Settings(database_url=fresh_database))
    assert isinstance(open_replay_cache(Settings(redis_url=redis_url), db), RedisReplayCache)
    assert isinstance(open_replay_cache(Settings(), postgres), DbReplayCache)
    broker = Settings(broker_url=redis_url)  # a Redis broker serves as the cache's Redis
    assert isinstance(open_replay_cache(broker, postgres), RedisReplayCache)
    assert isinstance(open_replay_cache(Settings(), db), MemoryReplayCache)  # embedded
    memory = Settings(redis_url=redis_url, replay_cache="memory")
    assert isinstance(open_replay_cache(memory, db), MemoryReplayCache)
    assert isinstance(
        open_replay_cache(Settings(redis_url=redis_url, replay_cache="db"), db), DbReplayCache
    )
    with pytest.raises(ValueError):
        Settings(replay_cache="disk")
