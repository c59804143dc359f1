"""Storage: URI rules (traversal, roots, private addresses), the local store's atomic writes,
HTTP fetching limits, and S3 error mapping."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.stub import Stubber

from pipeline.errors import FileTooLarge, ForbiddenURI, InvalidArgument, ObjectNotFound
from pipeline.storage import (
    LocalStore,
    S3Store,
    check_public_host,
    fetch_http,
    parse_oss_prefix,
    parse_oss_uri,
    resolve_file_uri,
)


def test_parse_oss_uri_accepts_plain_keys() -> None:
    assert parse_oss_uri("oss://my-bucket/a/b c/ü.jpg") == ("my-bucket", "a/b c/ü.jpg")
    assert parse_oss_prefix("oss://my-bucket/dir/") == ("my-bucket", "dir/")
    assert parse_oss_prefix("oss://my-bucket/") == ("my-bucket", "")


@pytest.mark.parametrize(
    "uri",
    ["oss://b1b/../x", "oss://bkt/a/../../x", "oss://bkt//etc", "oss://bkt/./x", "oss://bkt/a/.."],
)
def test_traversal_is_refused(uri: str) -> None:
    with pytest.raises((ForbiddenURI, InvalidArgument)) as info:
        parse_oss_uri(uri)
    assert uri in info.value.message


@pytest.mark.parametrize(
    "uri",
    [
        "oss://B/x",
        "oss://bucket.oss-cn-hangzhou.aliyuncs.com/x",
        "oss://bkt/a\\b",
        "oss://bkt/a\x00b",
        "http://bkt/x",
        "oss://bkt/",
        "oss://bkt/" + "k" * 1024,
    ],
)
def test_malformed_oss_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_oss_uri(uri)


def test_file_uris_only_under_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_text("x")
    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    (root / "escape").symlink_to(outside)
    assert resolve_file_uri(f"file://{root}/sub/ok.txt", [root]) == root / "sub" / "ok.txt"
    for uri in (f"file://{outside}", f"file://{root}/escape", f"file://{root}/../secret.txt"):
        with pytest.raises(ForbiddenURI):
            resolve_file_uri(uri, [root])
    with pytest.raises(ForbiddenURI):
        resolve_file_uri(f"file://{root}/sub/ok.txt", [])


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
        "192.168.1.1",
        "0.0.0.0",
    ],
)
def test_private_hosts_are_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ForbiddenURI) as info:
        check_public_host(host, allow_private=False)
    assert "OPENIMM_HTTP_ALLOW_PRIVATE" in info.value.message
    check_public_host(host, allow_private=True)


def test_local_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("bkt", "a/1.txt", b"one")
    store.put_bytes("bkt", "a/b/2.txt", b"two")
    store.put_bytes("bkt", "c.txt", b"three")
    assert (tmp_path / "bkt" / "a" / "1.txt").read_bytes() == b"one"  # the documented layout
    assert [o.key for o in store.list("bkt", "a/")] == ["a/1.txt", "a/b/2.txt"]
    assert [o.key for o in store.list("bkt")] == ["a/1.txt", "a/b/2.txt", "c.txt"]
    assert [o.key for o in store.list("bkt", "a/b")] == ["a/b/2.txt"]
    assert list(store.list("nobucket")) == []
    assert store.stat("bkt", "c.txt").size == 5 and store.exists("bkt", "c.txt")
    store.delete("bkt", "c.txt")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("bkt", "c.txt")


def test_oversize_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("bkt", "keep.bin", b"old")
    with pytest.raises(FileTooLarge):
        store.put_stream("bkt", "keep.bin", io.BytesIO(b"x" * 5000), max_bytes=4096)
    assert store.get_bytes("bkt", "keep.bin") == b"old"  # the old object is intact
    assert sorted(p.name for p in (tmp_path / "bkt").iterdir()) == ["keep.bin"]  # no temp file


def test_store_refuses_escaping_keys_even_without_uri_parsing(tmp_path: Path) -> None:
    with pytest.raises(ForbiddenURI):
        LocalStore(tmp_path / "oss").put_bytes("bkt", "../../escape", b"x")
    assert not (tmp_path / "escape").exists()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/small")
            self.end_headers()
            return
        body = b"y" * (10_000 if self.path == "/big" else 100)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_http_limits_and_redirects(http_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    assert (
        fetch_http(f"{http_server}/redirect", dest, max_bytes=1000, timeout=5, allow_private=True)
        == 100
    )
    assert dest.read_bytes() == b"y" * 100
    with pytest.raises(FileTooLarge):
        fetch_http(
            f"{http_server}/big",
            tmp_path / "big.bin",
            max_bytes=1000,
            timeout=5,
            allow_private=True,
        )
    assert not (tmp_path / "big.bin").exists()
    with pytest.raises(ForbiddenURI):
        fetch_http(
            f"{http_server}/small",
            tmp_path / "p.bin",
            max_bytes=1000,
            timeout=5,
            allow_private=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_s3_errors_map_to_imm_errors() -> None:
    store = S3Store("http://127.0.0.1:9", "ak", "sk", "us-east-1")
    with Stubber(store.client) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        with pytest.raises(ObjectNotFound):
            store.stat("bkt", "missing")
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        with pytest.raises(ObjectNotFound):
            store.get_bytes("bkt", "missing")
