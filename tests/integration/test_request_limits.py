"""The request-head limit on a real uvicorn socket, with both HTTP parsers (issue 9.8): an
8 MiB header is refused, a BatchIndexFileMeta-sized query string (100 files, ~30 KB) is not."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from pipeline.api.app import create_app
from pipeline.server import api_config
from pipeline.settings import Settings
from tests.e2e.stack import free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["httptools", "h11"])
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        data_dir=tmp_path, broker_url="memory://", access_keys="AK1:secret-1", port=free_port()
    )
    server = uvicorn.Server(api_config(settings, create_app(settings), http=request.param))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, what="uvicorn started")
    yield f"127.0.0.1:{settings.port}"
    server.should_exit = True
    thread.join(30)


def _status(endpoint: str, head: bytes) -> int:
    host, port = endpoint.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        # The server may refuse and close while we are still sending.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(head)
        response = b""
        while b"\r\n" not in response:
            chunk = conn.recv(4096)
            if not chunk:
                break
            response += chunk
    return int(response.split(b" ", 2)[1]) if response else 0


def test_an_8_mib_header_is_refused(endpoint: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    assert _status(endpoint, head) in (400, 431)


def test_a_batch_index_sized_query_is_accepted(endpoint: str) -> None:
    files = ",".join(
        f'{{"URI":"oss://bucket/photos/2026/album-{n:03d}/image-{n:05d}.jpg",'
        f'"CustomLabels":{{"album":"summer-{n}","note":"{"n" * 150}"}}}}'
        for n in range(100)
    )
    query = httpx.QueryParams({"Action": "BatchIndexFileMeta", "Files": f"[{files}]"})
    assert 30_000 < len(str(query)) < 60_000
    response = httpx.post(f"http://{endpoint}/?{query}", timeout=30)
    assert response.status_code == 401  # parsed and refused as unsigned, not by the parser
    assert response.json()["Code"] == "MissingAuthorization"
