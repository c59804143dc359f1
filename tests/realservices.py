"""Real PostgreSQL and Redis servers started from the installed binaries for the session.

No Docker: ``initdb``/``pg_ctl`` run as the ``postgres`` user (PostgreSQL refuses root) in a
temp dir on a free loopback port; ``redis-server`` runs with AOF on so a restart keeps its data.
A missing binary fails the session naming the apt package to install — never a skip.

Cleanup: the session fixtures stop their server at teardown (also after failures), every
server is registered with ``atexit``, and each temp dir records the pid of the Python process
that owns it, so servers orphaned by a hard-killed run (SIGKILL, ``os._exit``) are stopped by
the next run.

Use from conftest: ``from tests.realservices import postgres_server, redis_server  # noqa``
(plus ``fresh_database`` and ``redis_url``), or load the module as a plugin with
``pytest -p tests.realservices``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
import pytest
import redis
from psycopg import sql

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
PG_PREFIX = "openimm-pg-"
REDIS_PREFIX = "openimm-redis-"
OWNER_FILE = "owner.pid"
PORT_ATTEMPTS = 3  # a free port can be taken between picking it and the server binding it


# ---------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin/", path)
    return tuple(int(p) for p in match.group(1).split(".") if p) if match else ()


def _binary(name: str, package: str, fallbacks: Sequence[str] = ()) -> str:
    """Path of an installed server binary; fails (never skips) the test if it is missing."""
    path = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if not path:
        pytest.fail(
            f"{name} not found on PATH or in {list(fallbacks)}: "
            f"install it with `apt-get install {package}`",
            pytrace=False,
        )
    return path


def _pg_bin(name: str) -> str:
    found = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    return _binary(name, "postgresql", sorted(found, key=_version_key, reverse=True))


def _redis_bin() -> str:
    return _binary("redis-server", "redis-server", ["/usr/bin/redis-server"])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def _poll(check: Callable[[], object], what: str, describe: Callable[[], str]) -> None:
    """Call ``check`` until it returns truthy; raise with ``describe()`` at the deadline."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, psycopg.Error, redis.RedisError) as exc:  # not up yet
            last = exc
        time.sleep(0.05)
    raise RuntimeError(
        f"{what} not ready within {STARTUP_TIMEOUT} s (last error: {last})\n{describe()}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(root: Path) -> None:
    (root / OWNER_FILE).write_text(str(os.getpid()))


def _reap_orphans(prefix: str, stop: Callable[[Path], None]) -> None:
    """Stop servers left in temp dirs whose owning Python process is gone."""
    for entry in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")):
        root = Path(entry)
        try:
            owner = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # being created right now, or not ours to judge
        if owner == os.getpid() or _pid_alive(owner):
            continue
        with contextlib.suppress(Exception):
            stop(root)
        shutil.rmtree(root, ignore_errors=True)


def _kill_if_serving(pidfile: Path, cwd: Path) -> None:
    """SIGKILL the pid in ``pidfile`` only if that process runs in ``cwd`` (no pid reuse)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        if Path(os.readlink(f"/proc/{pid}/cwd")).resolve() != cwd.resolve():
            return
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        return


# ---------------------------------------------------------------- PostgreSQL


def _as_postgres(args: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        server_log = f"\n--- {log}:\n{_tail(log)}" if log else ""
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}): {' '.join(args)}\n"
            f"{done.stdout}{done.stderr}{server_log}"
        )


def _pg_stop_dir(datadir: Path) -> None:
    if not (datadir / "postmaster.pid").exists():
        return
    with contextlib.suppress(RuntimeError):
        _as_postgres(
            [_pg_bin("pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "-t", "30", "stop"],
            "pg_ctl stop",
        )
    _kill_if_serving(datadir / "postmaster.pid", datadir)  # pg_ctl failed: no survivor


@dataclass
class PostgresServer:
    port: int
    datadir: Path
    sockdir: Path
    options: str = ""  # the postgres -o options it was started with (port included)

    @property
    def logfile(self) -> Path:
        return self.sockdir / "pg.log"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def pause(self) -> None:
        """``pg_ctl stop -m fast``: clients are disconnected, data stays (see ``resume``)."""
        _as_postgres(
            [_pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop"],
            "pg_ctl stop",
            self.logfile,
        )

    def resume(self) -> None:
        """Start the paused cluster again on the same port and data dir."""
        _pg_start(self)

    def stop(self) -> None:
        """Stop the cluster (immediate: its data is thrown away) and remove its temp dir."""
        _pg_stop_dir(self.datadir)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)
        atexit.unregister(self.stop)


def _pg_start(server: PostgresServer) -> None:
    _as_postgres(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(server.datadir),
            "-o",
            server.options,
            "-l",
            str(server.logfile),
            "-w",
            "-t",
            str(int(STARTUP_TIMEOUT)),
            "start",
        ],
        "pg_ctl start",
        server.logfile,
    )


def start_postgres() -> PostgresServer:
    initdb = _pg_bin("initdb")
    _reap_orphans(PG_PREFIX, lambda root: _pg_stop_dir(root / "data"))
    root = Path(tempfile.mkdtemp(prefix=PG_PREFIX))
    _claim(root)
    root.chmod(0o755)
    shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(port=0, datadir=root / "data", sockdir=root)
    atexit.register(server.stop)
    try:
        _as_postgres(
            [initdb, "-D", str(server.datadir), "--auth=trust", "-U", "postgres", "-E", "UTF8"],
            "initdb",
        )
        for attempt in range(PORT_ATTEMPTS):
            server.port = _free_port()
            server.options = (
                f"-c listen_addresses=127.0.0.1 -c port={server.port} "
                f"-c unix_socket_directories={server.sockdir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                _pg_start(server)
                break
            except RuntimeError as exc:
                port_taken = "Address already in use" in str(exc)
                if not port_taken or attempt == PORT_ATTEMPTS - 1:
                    raise
                _pg_stop_dir(server.datadir)

        def ready() -> bool:
            with psycopg.connect(server.url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True

        _poll(ready, "PostgreSQL", lambda: _tail(server.logfile))
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def logfile(self) -> Path:
        return self.dir / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _launch(self) -> None:
        binary = _redis_bin()
        self._log = open(self.logfile, "ab")  # noqa: SIM115 (closed in stop)
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
                "--pidfile",
                str(self.dir / "redis.pid"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {proc.returncode} on port {self.port}\n"
                    f"{_tail(self.logfile)}"
                )
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
                return bool(client.ping())

        _poll(ready, f"Redis on port {self.port}", lambda: _tail(self.logfile))

    def _terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: Redis fsyncs the AOF and exits
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, *, clean: bool = True) -> None:
        """Stop the server; with ``clean`` also remove its dir (AOF included)."""
        self._terminate()
        if clean:
            shutil.rmtree(self.dir, ignore_errors=True)
            atexit.unregister(self.stop)

    def restart(self) -> None:
        """SIGTERM and start again on the same port and dir: AOF data survives."""
        self._terminate()
        self._launch()

    def pause(self) -> None:
        """SIGTERM (the AOF is flushed); :meth:`resume` starts it again, data kept."""
        self._terminate()

    def resume(self) -> None:
        self._launch()


def _redis_stop_dir(root: Path) -> None:
    pidfile = root / "redis.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
        if Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == root.resolve():
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    except (OSError, ValueError, IndexError):
        return
    _kill_if_serving(pidfile, root)


def start_redis() -> RedisServer:
    _redis_bin()
    _reap_orphans(REDIS_PREFIX, _redis_stop_dir)
    server = RedisServer(port=0, dir=Path(tempfile.mkdtemp(prefix=REDIS_PREFIX)))
    _claim(server.dir)
    atexit.register(server.stop)
    try:
        for attempt in range(PORT_ATTEMPTS):
            server.port = _free_port()
            try:
                server._launch()
                break
            except RuntimeError:
                server._terminate()
                port_taken = "Address already in use" in _tail(server.logfile, 5)
                if not port_taken or attempt == PORT_ATTEMPTS - 1:
                    raise
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (trust auth, user ``postgres``)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis (AOF on) for the session."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> str:
    """URL of a new, empty, uniquely named database for this test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of Redis DB 15 on the session server, flushed for this test."""
    url = redis_server.url(15)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url
