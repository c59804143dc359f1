"""Storage: fetching http(s) inputs (limits, redirects, address checks against a local server
thread) and ``MediaIO`` materialising every input scheme."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline import netpolicy
from pipeline.errors import FileTooLarge, ForbiddenURI, InvalidArgument, ObjectNotFound
from pipeline.settings import Settings
from pipeline.storage import (
    LocalStore,
    MediaIO,
    S3Store,
    fetch_http,
    open_store,
)


class _Handler(BaseHTTPRequestHandler):
    seen: list[str] = []  # every request line that reached the server

    def do_GET(self) -> None:
        assert isinstance(self.server, ThreadingHTTPServer)
        _Handler.seen.append(self.path)
        port = self.server.server_port
        redirects = {
            "/redirect": "/small",
            "/loop": "/loop",
            "/to-file": "file:///etc/passwd",
            "/to-localhost": f"http://localhost:{port}/small",
        }
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.end_headers()
        elif self.path == "/missing":
            self.send_error(404)
        elif self.path == "/slow":
            self._slow()
        else:
            body = b"y" * (10_000 if self.path in ("/big", "/nolength") else 100)
            self.send_response(200)
            if self.path != "/nolength":  # HTTP/1.0: the body then ends when we close
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"s" * 10)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            return  # the client gave up, as it should

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fetch(url: str, dest: Path, allow_private: bool = True, timeout: float = 5) -> int:
    return fetch_http(url, dest, max_bytes=1000, timeout=timeout, allow_private=allow_private)


def test_fetch_http_limits_and_redirects(http_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    assert _fetch(f"{http_server}/redirect", dest) == 100
    assert dest.read_bytes() == b"y" * 100
    for path in ("/big", "/nolength"):  # declared and streamed size both enforced
        with pytest.raises(FileTooLarge):
            _fetch(f"{http_server}{path}", tmp_path / "big.bin")
    with pytest.raises(ForbiddenURI):
        _fetch(f"{http_server}/small", tmp_path / "p.bin", allow_private=False)
    with pytest.raises(InvalidArgument, match="redirects"):
        _fetch(f"{http_server}/loop", tmp_path / "l.bin")
    with pytest.raises(InvalidArgument, match="only http and https"):
        _fetch(f"{http_server}/to-file", tmp_path / "t.bin")
    with pytest.raises(ObjectNotFound):
        _fetch(f"{http_server}/missing", tmp_path / "m.bin")
    with pytest.raises(InvalidArgument, match="only http and https"):
        _fetch("ftp://127.0.0.1/x", tmp_path / "ftp.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no partial or temp file


def test_fetch_http_total_timeout(http_server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="timed out"):
        _fetch(f"{http_server}/slow", tmp_path / "slow.bin", timeout=0.5)
    assert time.monotonic() - started < 3  # the whole download, not each 50 ms read
    assert list(tmp_path.iterdir()) == []


def test_fetch_http_rechecks_every_redirect_hop(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []

    def resolve(host: str, port: int, allow_private: bool) -> list[str]:
        checked.append(host)  # pretend 127.0.0.1 is public and localhost is not
        if host != "127.0.0.1":
            raise ForbiddenURI(f"{host} is private")
        return [host]

    monkeypatch.setattr(netpolicy, "resolve", resolve)
    monkeypatch.setattr(netpolicy, "is_private", lambda address: False)  # the peer check
    with pytest.raises(ForbiddenURI):
        _fetch(f"{http_server}/to-localhost", tmp_path / "r.bin", allow_private=False)
    assert checked == ["127.0.0.1", "localhost"]
    assert list(tmp_path.iterdir()) == []


def test_fetch_http_checks_the_connected_address(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name checked as public, but the connection lands on 127.0.0.1.
    # The socket's peer is checked before the request is written: the server sees nothing.
    monkeypatch.setattr(netpolicy, "resolve", lambda host, port, allow: [host])
    with pytest.raises(ForbiddenURI, match="connected to a private address"):
        _fetch(f"{http_server}/peer-check", tmp_path / "r.bin", allow_private=False)
    assert list(tmp_path.iterdir()) == []
    assert "/peer-check" not in _Handler.seen


# --- MediaIO and open_store -----------------------------------------------------------------


def test_media_io_materialises_every_scheme(http_server: str, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "in.txt").write_text("local")
    settings = Settings(data_dir=tmp_path / "data", file_roots=str(roots), http_allow_private=True)
    store = open_store(settings)
    assert isinstance(store, LocalStore) and store.root == settings.oss_root
    store.put_bytes("bkt", "dir/photo.jpg", b"jpeg")
    media = MediaIO(settings, store)
    work = tmp_path / "work"
    assert media.fetch("oss://bkt/dir/photo.jpg", work) == work / "photo.jpg"
    assert (work / "photo.jpg").read_bytes() == b"jpeg"
    assert media.fetch(f"file://{roots}/in.txt", work) == roots / "in.txt"  # not copied
    assert media.fetch(f"{http_server}/redirect?x=1", work) == work / "redirect"
    assert media.fetch(f"{http_server}/a/..", tmp_path / "w2").parent == tmp_path / "w2"
    assert media.stat_input("oss://bkt/dir/photo.jpg") == 4
    assert media.stat_input(f"file://{roots}/in.txt") == 5
    for missing in ("oss://bkt/nope", f"file://{roots}/nope", f"file://{roots}"):
        with pytest.raises(ObjectNotFound):
            media.stat_input(missing)
    with pytest.raises(ObjectNotFound):
        media.fetch("oss://bkt/nope", work)
    with pytest.raises(ForbiddenURI):
        media.fetch(f"file://{tmp_path}/data/openimm.db", work)
    for unsupported in ("ftp://x/y", "s3://bkt/x"):
        with pytest.raises(InvalidArgument):
            media.fetch(unsupported, work)
    with pytest.raises(InvalidArgument):
        media.stat_input(f"{http_server}/small")


def test_open_store_picks_s3_when_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:9")
    assert isinstance(open_store(settings), S3Store)  # lazily: no connection attempted
