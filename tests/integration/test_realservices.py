"""The real-service fixtures themselves: PostgreSQL and Redis really run, and clean up."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
import redis

from tests import realservices
from tests.realservices import PostgresServer, RedisServer, start_postgres, start_redis

pytestmark = pytest.mark.integration


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_postgres_server_answers(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        row = conn.execute("SELECT version(), current_setting('fsync')").fetchone()
    assert row is not None
    assert "PostgreSQL" in row[0]
    assert row[1] == "off"
    assert postgres_server.url("x") == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/x"


def test_postgres_unix_socket_in_sockdir(postgres_server: PostgresServer) -> None:
    with psycopg.connect(
        host=str(postgres_server.sockdir), port=postgres_server.port, user="postgres"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_fresh_database_roundtrip(fresh_database: str) -> None:
    with psycopg.connect(fresh_database) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO t (name) VALUES (%s), (%s)", ("a", "b"))
        conn.commit()
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT name FROM t ORDER BY id").fetchall() == [("a",), ("b",)]


def test_create_database_gives_distinct_databases(
    postgres_server: PostgresServer, fresh_database: str
) -> None:
    other = postgres_server.create_database("weird-Name")  # quoted identifier
    assert other != fresh_database
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("weird-Name",)


def test_redis_set_get(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0  # flushed for this test
        client.set("k", "v")
        assert client.get("k") == b"v"


def test_redis_url_is_flushed_per_test(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0  # the previous test's key is gone
        client.set("leftover", "1")


def test_redis_restart_keeps_aof_data() -> None:
    server = start_redis()  # own server: the shared one is not restarted under other tests
    try:
        with redis.Redis.from_url(server.url(3)) as client:
            client.set("survivor", "yes")
            client.rpush("queue", "a", "b")
        old_pid = server.proc.pid if server.proc else None
        server.restart()
        assert server.proc is not None and server.proc.pid != old_pid
        with redis.Redis.from_url(server.url(3)) as client:
            assert client.get("survivor") == b"yes"
            assert client.lrange("queue", 0, -1) == [b"a", b"b"]
    finally:
        server.stop()
    assert not server.dir.exists()
    assert server.proc is not None and server.proc.poll() is not None
    assert not _port_open(server.port)


def test_postgres_stop_removes_everything() -> None:
    server = start_postgres()
    root = server.datadir.parent
    try:
        assert (server.datadir / "postmaster.pid").exists()
        assert server.create_database("scratch").endswith("/scratch")
    finally:
        server.stop()
    assert not root.exists()
    assert not _port_open(server.port)
    server.stop()  # idempotent


def test_missing_binary_fails_not_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realservices.shutil, "which", lambda name: None)
    monkeypatch.setattr(realservices.glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        start_postgres()
    monkeypatch.setattr(realservices.os, "access", lambda path, mode: False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        start_redis()


def test_orphans_of_dead_sessions_are_reaped(tmp_path: Path) -> None:
    """A server whose owning Python process died is stopped by the next start."""
    orphan = start_redis()
    try:
        (orphan.dir / realservices.OWNER_FILE).write_text("999999999")  # no such pid
        fresh = start_redis()  # reaps the orphan before starting
        try:
            assert orphan.proc is not None
            orphan.proc.wait(10)
            assert not orphan.dir.exists()
            with redis.Redis.from_url(fresh.url()) as client:
                assert client.ping()
        finally:
            fresh.stop()
    finally:
        orphan.stop()


def test_foreign_or_live_dirs_are_left_alone(tmp_path: Path) -> None:
    live = start_redis()  # owned by this (live) process
    try:
        start_redis().stop()
        assert live.dir.exists()
        with redis.Redis.from_url(live.url()) as client:
            assert client.ping()
    finally:
        live.stop()


def test_redis_server_fixture_url(redis_server: RedisServer) -> None:
    assert redis_server.url(2) == f"redis://127.0.0.1:{redis_server.port}/2"
    assert (redis_server.dir / "redis.pid").exists()
