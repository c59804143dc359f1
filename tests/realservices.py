"""Real PostgreSQL and Redis servers started from the installed binaries for the session.

No Docker: ``initdb``/``pg_ctl`` run as the ``postgres`` user (PostgreSQL refuses root) in a
temp dir on a free port; ``redis-server`` runs with AOF on so a restart keeps its data.
A missing binary fails the session with the apt package to install — never a skip.
"""

from __future__ import annotations

import atexit
import glob
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

STARTUP_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        pytest.fail(f"PostgreSQL binary {name} not found: apt-get install postgresql", False)
    return str(path)


def _poll(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the server is not up yet; keep polling until the deadline
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT} s: {last}")


def _pg_ctl(datadir: Path, *args: str, check: bool = True) -> None:
    """pg_ctl as the postgres user (PostgreSQL refuses to run as root)."""
    cmd = ["runuser", "-u", "postgres", "--", _pg_bin("pg_ctl"), "-D", str(datadir), *args]
    subprocess.run(cmd, check=check, capture_output=True)


@dataclass
class PostgresServer:
    port: int
    datadir: Path
    sockdir: Path

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _pg_ctl(self.datadir, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    root = Path(tempfile.mkdtemp(prefix="openimm-pg-"))
    root.chmod(0o755)
    shutil.chown(root, "postgres", "postgres")
    datadir, sockdir = root / "data", root
    port = _free_port()
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            _pg_bin("initdb"),
            "-D",
            str(datadir),
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} "
        f"-c unix_socket_directories={sockdir} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    _pg_ctl(datadir, "-o", options, "-l", str(root / "pg.log"), "-w", "start")
    server = PostgresServer(port=port, datadir=datadir, sockdir=sockdir)
    atexit.register(server.stop)
    _poll(lambda: psycopg.connect(server.url(), connect_timeout=2).close() or True, "PostgreSQL")
    return server


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _launch(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server not found: apt-get install redis-server", False)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _poll(lambda: redis.Redis.from_url(self.url()).ping(), "Redis")

    def stop(self, *, clean: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            self.proc.wait(30)
        if clean:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        self.stop(clean=False)
        self._launch()


def start_redis() -> RedisServer:
    server = RedisServer(port=_free_port(), dir=Path(tempfile.mkdtemp(prefix="openimm-redis-")))
    server._launch()
    atexit.register(server.stop)
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> str:
    """URL of a new, empty database for this test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of Redis DB 15, flushed for this test."""
    url = redis_server.url(15)
    redis.Redis.from_url(url).flushdb()
    return url
