"""Issue 9 attacks against real openimm processes with requests the official IMM SDK signed:
the duplicated-header action swap, the replay of a signed create (also across two API
processes sharing Redis), and an empty key file refusing to start.

A recording TCP proxy sits between the SDK and openimm and keeps each request's raw bytes,
so the attacks re-send exactly what a real client put on the wire.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_imm20200930 import models as m
from sqlalchemy import create_engine, func, select

from pipeline.models import Task
from tests.e2e.stack import Stack, free_port, imm_sdk, make_env
from tests.realservices import PostgresServer, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _read_message(conn: socket.socket) -> bytes:
    """One HTTP/1.1 message (head + Content-Length body) from ``conn``; b"" at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


class RecordingProxy(threading.Thread):
    """Forwards each request to ``upstream`` and records its raw bytes in ``requests``."""

    def __init__(self, upstream: int) -> None:
        super().__init__(daemon=True)
        self.upstream = upstream
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as up:
            while request := _read_message(client):
                self.requests.append(request)
                up.sendall(request)
                client.sendall(_read_message(up))

    def close(self) -> None:
        self.server.close()


def send_raw(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request)
        response = _read_message(conn)
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def with_header(request: bytes, line: bytes) -> bytes:
    """``request`` with an extra header line right after the request line (an *earlier* one)."""
    first, _, rest = request.partition(b"\r\n")
    return first + b"\r\n" + line + b"\r\n" + rest


@pytest.fixture(scope="module")
def shared_redis_stack(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, Stack]]:
    """Two API processes on one PostgreSQL and one Redis (the distributed replay cache)."""
    data = tmp_path_factory.mktemp("security")
    settings = {
        "database_url": postgres_server.create_database("e2e_security"),
        "broker_url": redis_server.url(14),
        "redis_url": redis_server.url(15),
    }
    first = Stack(data_dir=data, env=make_env(data, free_port(), **settings), port=0)
    first.port = int(first.env["OPENIMM_PORT"])
    first.run("migrate")
    first.start_api()
    second_env = {**first.env, "OPENIMM_PORT": str(free_port())}
    second = Stack(data_dir=data, env=second_env, port=int(second_env["OPENIMM_PORT"]))
    second.logs = data / "second"
    second.logs.mkdir()
    second.start_api()
    yield first, second
    first.stop_all()
    second.stop_all()


@pytest.fixture
def proxy(shared_redis_stack: tuple[Stack, Stack]) -> Iterator[RecordingProxy]:
    recorder = RecordingProxy(shared_redis_stack[0].port)
    recorder.start()
    yield recorder
    recorder.close()


def test_a_second_action_header_cannot_turn_get_into_delete(
    shared_redis_stack: tuple[Stack, Stack], proxy: RecordingProxy
) -> None:
    # Given a project and a GetProject call the official SDK signed
    api, _ = shared_redis_stack
    sdk = imm_sdk(f"127.0.0.1:{proxy.port}")
    sdk.create_project(m.CreateProjectRequest(project_name="victim"))
    sdk.get_project(m.GetProjectRequest(project_name="victim"))
    captured = proxy.requests[-1]
    assert b"x-acs-action: GetProject" in captured
    # When it is re-sent with an extra, earlier x-acs-action: DeleteProject
    status, body = send_raw(api.port, with_header(captured, b"x-acs-action: DeleteProject"))
    # Then it is refused and the project is still there
    assert status == 400 and b"InvalidArgument.Duplicated" in body
    assert sdk.get_project(m.GetProjectRequest(project_name="victim")).body.project
    status, body = send_raw(api.port, captured.replace(b"GetProject", b"DeleteProject"))
    assert status == 403 and b"SignatureDoesNotMatch" in body  # the action is signed


def test_a_replayed_signed_create_makes_no_second_task(
    shared_redis_stack: tuple[Stack, Stack], proxy: RecordingProxy
) -> None:
    # Given a task create signed by the official SDK, sent once through the proxy
    api, other_api = shared_redis_stack
    sdk = imm_sdk(f"127.0.0.1:{proxy.port}")
    sdk.create_project(m.CreateProjectRequest(project_name="replayed"))
    request = m.CreateFileCompressionTaskRequest(
        project_name="replayed",
        target_uri="oss://media/out/a.zip",
        sources=[m.CreateFileCompressionTaskRequestSources(uri="oss://media/docs/")],
    )
    sdk.create_file_compression_task(request)
    captured = proxy.requests[-1]
    assert b"CreateFileCompressionTask" in captured
    # When the captured bytes are replayed, to the same API process and to another one
    for port in (api.port, other_api.port):
        status, body = send_raw(port, captured)
        # Then each replay is refused
        assert status == 403 and b"SignatureNonceUsed" in body
    engine = create_engine(api.env["OPENIMM_DATABASE_URL"].replace("://", "+psycopg://", 1))
    with engine.connect() as conn:
        count = conn.scalar(
            select(func.count()).select_from(Task).where(Task.project_name == "replayed")
        )
    engine.dispose()
    assert count == 1


@pytest.mark.parametrize("command", ["api", "serve"])
@pytest.mark.parametrize("content", ["", "garbage-without-colon\n"])
def test_an_empty_or_malformed_key_file_refuses_to_start(
    tmp_path: Path, command: str, content: str
) -> None:
    # Given a data dir whose key file is empty (or malformed), no keys in the environment
    (tmp_path / "access_keys").write_text(content)
    env = make_env(tmp_path, free_port())
    del env["OPENIMM_ACCESS_KEYS"]
    # When openimm starts, Then it exits with EX_CONFIG and says why; nothing listens
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr[-2000:]
    assert "access_keys" in done.stderr and "configuration error" in done.stderr


def test_an_absent_key_file_is_generated_and_enforced(tmp_path: Path) -> None:
    # The embedded default: no keys anywhere → a key pair is generated and required
    env = make_env(tmp_path, free_port())
    del env["OPENIMM_ACCESS_KEYS"]
    stack = Stack(data_dir=tmp_path, env=env, port=int(env["OPENIMM_PORT"]))
    stack.start_api()
    try:
        key = (tmp_path / "access_keys").read_text().strip()
        assert key.startswith("LTAI") and ":" in key
        import httpx

        unsigned = httpx.post(f"http://{stack.endpoint}/?Action=ListProjects", timeout=10)
        assert unsigned.status_code == 401
    finally:
        stack.stop_all()
